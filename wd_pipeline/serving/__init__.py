"""The champion at work: the served pyfunc model (raw columns in, probability out) and batch scoring."""
