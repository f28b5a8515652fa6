"""The Braze REST client and the emulator the tests and the demo run against."""
