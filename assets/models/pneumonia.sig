{
 "format": "medscreen.model-signature/1",
 "algorithm": "ed25519",
 "key": "129832e0b965a47a",
 "manifest_sha256": "ddfe48b06128f681f3a08b8a9ad6666315ab59e8d884d4b2c74016e7f96a02fd",
 "signature": "QSf6mO4B441H6uV+WT6i9IiF8ctihNRoFsgf9FmRgBuhZnu+xl2aoLgXMNkZuZodCIy7jvmrfm8+HBO9OiJIBw=="
}
