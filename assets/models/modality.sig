{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "2c6f61e5151aa756ace5b14d45068785b54da22d0b32179a31f7cf68a04e5bfb",
 "signature": "R+MAXRl6/ATKOJui8qbAie7JC/U0aTqFgHW/DxgYKIyfWlYijo4YSqCtvzi9C77b0qKPRN464nC8DD8/BALOAQ=="
}
