"""onecard's compiled core (Cython): framing, codecs, MACs, state and authorisation."""
