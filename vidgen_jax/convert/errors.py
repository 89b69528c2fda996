"""The error both checkpoint importers raise when a state dict does not fit the Flax module."""


class ConversionError(ValueError):
  """A state dict that does not fit the module; lists every offending key, grouped by kind of problem."""

  def __init__(self, message, *, unknown=(), unexpected=(), mismatched=(), missing=()):
    self.unknown, self.unexpected = list(unknown), list(unexpected)
    self.mismatched, self.missing = list(mismatched), list(missing)
    parts = [message]
    for title, items in (("unknown torch keys (no Flax counterpart)", self.unknown),
                         ("torch keys this module has no parameter for", self.unexpected),
                         ("shape or value mismatches", self.mismatched),
                         ("module parameters missing from the state dict", self.missing)):
      if items:
        parts.append(f"{title} ({len(items)}):\n" + "\n".join(f"    {i}" for i in items))
    super().__init__("\n  ".join(parts))
