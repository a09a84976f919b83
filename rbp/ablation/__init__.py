"""Ablation studies: a grid of cells × seeds, run only where Parquet holds no result, then rendered.

- :mod:`~rbp.ablation.spec`         the spec's schema (YAML, data not code)
- :mod:`~rbp.ablation.jobs`         cells × seeds with their configs and run ids; ``load_spec``
- :mod:`~rbp.ablation.execute`      one job: train, write its row, keep its model
- :mod:`~rbp.ablation.runner`       the missing jobs, serially or on Ray (:mod:`~rbp.ablation.ray_backend`)
- :mod:`~rbp.ablation.tables`, :mod:`~rbp.ablation.figures`  pure functions of the results and the spec
"""
