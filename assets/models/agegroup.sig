{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "27fa4d0cf45ad16c731298d404c608dbf50880919aae530fd683135227ed7db9",
 "signature": "xBD0MeUtZv4m57uX/JpV//Bq7Uo0hlzbmZmm+OPpGhnuJ0BObjqR3+EB/ENi3aZdHNK+JIgEd42QGTDF1UbrAg=="
}
