"""Pure numpy maths for passes (no ONNX imports), unit-tested on arrays."""
