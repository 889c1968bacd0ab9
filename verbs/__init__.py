"""The verbs' flows: each verb's Python function, above the passes and the runtime layer."""
