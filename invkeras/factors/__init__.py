"""Semantic factors of a representation: the second INN of Rombach, Esser & Ommer (2020), after
Esser, Rombach & Ommer (CVPR 2020), "A Disentangling Invertible Interpretation Network".

A representation r (a cinn inverter's (h, v), which together are the whole autoencoder latent,
or any vector features) is mapped by an unconditional INN T to z~ = T(r), whose dimensions are
split into named blocks: one per semantic factor, plus a residual. Pairs of examples that share
a factor teach T to put that factor, and only it, into its block.

    config.py      FactorConfig: every setting of `invkeras train-factors`
    network.py     FactorINN (standardise r, then ActNorm / double coupling / permutation blocks,
                   the cinn kind's pieces with no condition) and FactorPairModel (the training model)
    loss.py        the pair likelihood: blocks of a shared factor correlated with coefficient rho
    pairs.py       pair sources: the procedural factors (a pair shares exactly one) or class labels
    matching.py    exact factors of procedural images: lookup and nearest rendering of the 6,912
    representation.py  what r is (cinn (h, v) or stored features), its tables, and the way back
                   from r to images
    dimensions.py  how many dimensions each factor holds (the paper's estimate from pairs)
    training.py    the training run (the shared resumable loop), saving, and loading back
"""
