"""Drawing numbers it is given: matplotlib figures (confusion matrices, maps, accuracy bars, learning curves,
transfer modes) and Markdown escaping. Knows no stage: every stage that shows something draws it here."""
