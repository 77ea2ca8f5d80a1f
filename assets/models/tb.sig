{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "c3290e2c7bee975d04aab68ecb04e9af53973bfa51900b58575f53657ac97c9d",
 "signature": "MzLrZxzeC/K3FVPku/5Ozriqju0Ag5stO2sMLhgdPSoyTabG9lQGzyJf0uwABKmfcJZApf6iJg9wXBTRM8AOCw=="
}
