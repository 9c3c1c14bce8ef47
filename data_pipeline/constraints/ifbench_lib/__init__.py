"""AllenAI's IFBench checkers (allenai/IFBench, Apache-2.0, see LICENSE here): the 58 out-of-distribution
instruction ids of IFBench_test.

Vendored from allenai/IFBench@db69a6f05689830b0068b8f1529ebcfd2f3b164c `ifbench/`; what was changed and why is
in README.md beside this file. Import it through `data_pipeline.constraints.ifbench`, which points NLTK at the
bundled data first.
"""
