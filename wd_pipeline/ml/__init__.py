"""The learning: the network and its weight decay, packed grid training, metrics, the choice of λ,
bootstrap intervals and the report. Imports TensorFlow only where it trains or predicts."""
