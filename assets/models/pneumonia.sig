{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "4ae6872f8927a2449420faba269edb84e8d5e30c2263b2bf2e2ad00089d9a9f0",
 "signature": "HMzMxnW/6N05PN2pZ1npo9hjStJ0UJDgAhUvltiPTNf/CjnAOA/9SR2xzY/3zbxDPzqmetqeLnwWJknb6bhQDA=="
}
