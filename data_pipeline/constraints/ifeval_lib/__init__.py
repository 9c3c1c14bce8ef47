"""Google's IFEval checkers (google-research `instruction_following_eval`, Apache-2.0, see LICENSE here).

Vendored from the PyPI wheel `if-verifiable` 0.1.2 (`if_verifiable/ifeval/`,
wheel sha256 911610fc69d9618fadf140b162ef0b4cb8798c31985874db5c41c1a5e3bcad76), which redistributes Google's
code with its licence headers. Only the import paths were changed. Import it through
`data_pipeline.constraints.ifeval`, which points NLTK at the bundled punkt_tab data first.
"""
