"""The exchange between platforms: signed hash signals, partners and their trust."""
