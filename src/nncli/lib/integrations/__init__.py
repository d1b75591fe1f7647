"""What train logs to and saves beside the weights: TensorBoard, MLflow, checkpoints."""
