"""The live actor console: routing and holds (:mod:`.desk`), what actors see (:mod:`.render`)
and the persistent controls they click (:mod:`.items`)."""
