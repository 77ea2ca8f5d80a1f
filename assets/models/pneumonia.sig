{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "ed18afc94770939ca07377e98a76524b89ba03849ba2dcd54b3f31f88aa2269a",
 "signature": "GKuVTTyMN+aFuirifMvRFIF/0uAuzD8do0V41TN4IFEWXAvS9bVSxGa7v4zSeoN3G2Uf65paYOIZ2SRBlyvqAg=="
}
