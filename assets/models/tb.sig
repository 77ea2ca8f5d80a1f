{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "f5f47810e6a3b1802e79605bd4983319a43c5a120e5bb9345273eeda5ff80df2",
 "signature": "sv3tzSTZTN+dktyCLgYyYXz0qRP1FCqiYHvXD9eb4PglqRz2ikOluQpRF7xHBlHLDdB2akqf+M/39gFGltamCQ=="
}
