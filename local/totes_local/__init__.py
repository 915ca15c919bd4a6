"""Local tooling: the totesys generator and simulator, the local AWS stand-in, demo and benchmarks.

Never deployed: the Lambda functions only see the ``totes`` layer package.
"""
