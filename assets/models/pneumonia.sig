{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "ef73e2e490c7814d95c6f811be83f8d780643b03513d3d383d2ae628c8719aa1",
 "signature": "RUU3LkFQ2I+z4nI6Sxakv+ahD2P8mNpNhn4qVvsMAgfWF3doKBZvAOShsa0Lx2YriFEcxH6RkQRmce0fujoIAw=="
}
