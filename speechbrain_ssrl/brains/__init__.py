"""SpeechBrain ``Brain`` subclasses of the method: DINO (stage 1), SSRL (stage 2), iterative baseline."""
