"""Evaluation shared by every method: codes and labels in, metrics out.

``metrics`` (MAP@all, MAP@K under both of the field's conventions, P@N, PR curves),
``metrics_host`` (the CPU ranking path), ``plots`` (PNG curves), ``index`` (packed-bit
Hamming and inner-product top-k search) and ``protocol`` (i2t / t2i evaluation,
the random-codes chance level, ``results.json``). Nothing here asks which method made
the codes.
"""
