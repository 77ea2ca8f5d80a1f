{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "0961cf07a6cb79493308f2a23aaeb2d32964c90f96ff10cb9c7653cba06cb1c5",
 "signature": "bMVVoW0xQrje0+TyIUD5i0cfhG1ICNBAm0JAzyoEWCMBYqAQTo+8IcW/A74VOLdpnTH/VDYpjBTS0DzzWHILDQ=="
}
