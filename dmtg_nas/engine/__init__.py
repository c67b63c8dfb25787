"""The training engine below the search: networks, losses, the multi-task Lightning module,
training and evaluating one network or a partition, and batched trainings of many small networks.

- :mod:`.networks`: the one factory of networks (:func:`~.networks.build_parts`,
  :func:`~.networks.plain_network`);
- :mod:`.losses`: a plain network's loss and a supernet's per-head losses;
- :mod:`.module`: :class:`~.module.MultiTaskModule` and the optimizer;
- :mod:`.train`: :func:`~.train.train_network`, :func:`~.train.evaluate`, :func:`~.train.train_partition`;
- :mod:`.batched`, :mod:`.stacked`: many networks of one shape trained as one computation.

Nothing here imports NNI, the search pipeline or the baselines.
"""
