{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "92e8bcbf8ecb379bd43d77592ad040c587c472db4dcf3845671479ba8936e3bb",
 "signature": "g2DNJpsBfsUoLPcZyYNbvRHoIKSewZ17d6sv+UnVi82AJ2i+ErJjEkHROPU3CXy+UZM99NkaNUzP1A610fQJBg=="
}
