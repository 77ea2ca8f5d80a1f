{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "eabad550ac3a625fad3c0f87a02f8650ec46dbe8c6654016df2c0f0b2fe83820",
 "signature": "+qjUsZq/HkME4VY08wbNyaMnnodeEy/ivv63BLyoKdjZCzwGvnV1MNo7Mby8ypy4WsAbbJcRLBdz2d9HwF00Bg=="
}
