{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "8915461f50bd18edee5fe04a047ee00e363fe8e1e111872f9f002062890dbe4b",
 "signature": "s7UEQ8QcbXCCkcYr9cTNoiiNYYvTsfpYYZdnkNTYKs6tCLTCOGG3rZeRJ/bObwmrRKHx2cz9D3qoAN3AfZwaDw=="
}
