{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "49abf996dffe19b8fd65bfe4673273602bf2372b31881bb96b04d13406b34655",
 "signature": "JjO5IbKF9xiP1cxnNLlBYO5qgPYY5HafMf9kSxmFYq1qipq6BR8lsCdEpVGuxgE8TKq79NC48VVfdP3qv+dBAw=="
}
