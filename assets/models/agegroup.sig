{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "657b6c70d143629a4c2c680a86035ec285eeabdb8f12cc2f5620dba6ad7a1c37",
 "signature": "zu0WAU7O4E8B4gPkUejh2FxGwREUuURb39hEOEM6aprWkI9nzpE9h3eGKmRVgCKvbzXTGwnHf6E2TMNc55Y4AA=="
}
