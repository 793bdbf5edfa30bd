"""Real workloads to analyse: models and data that researchers study today, runnable offline.

* :mod:`~spectra.workloads.text` and :mod:`~spectra.workloads.tiny_gpt`: a small
  decoder-only transformer language model on the Python standard library's own
  source files (character tokens, dict batches in the Hugging Face convention,
  ragged padding with ``-100``);
* :mod:`~spectra.workloads.resnet`: a small ResNet-style CNN with BatchNorm
  for 8x8 digit images;
* :mod:`~spectra.workloads.fit`: a short Adam training loop over batches of
  any convention, with an honest record of where it stopped.

``examples/transformer_lm.py`` and ``examples/resnet_batchnorm.py`` run them
end to end.
"""
