"""speechbrain-ssrl: self-supervised reflective learning (SSRL) of speaker embeddings for SpeechBrain.

One module per concept of the method (Cai, Cai, Li, Li, arXiv 2401.01473):
``clustering`` (k-means), ``label_queue`` (pseudo-label queues), ``noisy_labels`` (GMM clean
probabilities), ``ema`` (EMA teacher), ``dino`` (stage 1), ``losses`` (AAM-softmax with per-sample
loss), ``metrics`` (pseudo-label quality), ``scoring`` (EER / minDCF / AS-norm), ``export``
(EncoderClassifier-loadable models) and ``data`` (VoxCeleb preparation, MiniVox, views).
"""

__version__ = "0.1.0"
