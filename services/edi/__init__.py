"""The EDI trading-partner service (issue 15): X12 204 in; 997, 990, 214, 210 out; 997 in, over SFTP.

What exists so far is its foundation, :mod:`services.edi.domain`: plain Python, no gRPC, no Redis, no I/O.

* the X12 envelope and segment layer: delimiters read from the ISA, a tokenizer that keeps each interchange's own
  delimiters, ``ISA/GS/ST ... SE/GE/IEA`` with their counts and control numbers checked, and a writer that writes
  the ISA at exactly 106 characters and refuses (never corrupts) data holding a delimiter;
* declarative set schemas (segment order, loops, use counts, element types and lengths, code lists, X12 syntax
  notes such as ``P0304``) for the 997 and the 204, which validate a set into AK3/AK4 errors;
* acknowledgements: the 997 for a received group, the TA1 for an interchange, and the reading of an inbound 997
  (which of our GS06/ST02 were accepted);
* control numbers (ISA13, GS06, ST02) as a pure mapping from a durable per-partner counter.

Still to come (issue 15): the 204 -> tender mapping, the 990/214/210 writers, the service around it (store of
control counters and raw interchanges, SFTP door, workers, metrics) and ``haulmesh edi check``.
"""
