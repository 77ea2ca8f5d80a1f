{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "51cb706b39be25547c22a5e2bf053f28eddee5baaa619a8876c43d9975c54496",
 "signature": "fWBag+EWTVNyLaQXeNAi5bs2+vISc7MhCyPOLk+x4Fv143GdECmDDA3lpiDhiILYKHAd7Oge9hZ9VMf90+n3DQ=="
}
