{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "6e414cbdebb2bf5adf16a02b212b324ce42069086163f4fc92ae38b744e432b7",
 "signature": "Sh/0sXt2xMGUIbzSoOL8cF/NsYoqxM4CVjqmO5bMDNo6CZxyrXyooxcXP+KAOYnKSxXSKREZUMBDsK41hU+YCw=="
}
