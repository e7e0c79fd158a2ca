"""Backend implementations, each found by sdns through the entry-point group ``sdns.backends``
(see ``sdns.store``); sdns itself never imports this package."""
