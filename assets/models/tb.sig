{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "bc93d13b4f7bf24912282d96be471f26aaf419438504556feac16e3e63cd5ba9",
 "signature": "m0aJ0fns2Y2etltruKVuwOLnqxgPcYz6y3Eav3kg87L1DuZp2kx9qRtirsrlv2iDP6UMf2ROXI8sBqc8LBoICA=="
}
