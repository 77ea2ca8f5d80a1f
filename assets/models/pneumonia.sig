{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "216dc8c5e471e91a7d2bce4781745fae0f75e5105d7e16c8b311f68828228d1e",
 "signature": "99AzdHMjNvFHv4euJn+8yJlRkbmykY4bVcawn4W4xT8Dceb4WGz9sQoJ+ShFyG9JJK+bg+gGyWWSD8LvDQaIAg=="
}
