{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "f4ca99218c89fc33a9a9c9da9b684e5124dc780a46c8d8d24a70ea8a350959e3",
 "signature": "kyOHnU6e7SsLzW4nFB6sO3Qzr1QJmrTqtELN1CjM/tmAiKlrM6VQLuQNNcNPMn4t2jJzRx5M2Jtj478PNWiUCw=="
}
