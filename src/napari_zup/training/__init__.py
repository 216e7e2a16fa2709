"""Training of the learned methods (``zup train <method>``); torch is imported lazily."""
