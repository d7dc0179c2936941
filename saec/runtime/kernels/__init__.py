"""Fused LIF scan kernels: a C kernel for the CPU (built on first use, optional) and a
Triton kernel for CUDA (optional). :mod:`saec.runtime.lif.dispatch` picks one per call and falls
back to plain torch ops when neither applies, so no compiler is needed to use saec.
"""
