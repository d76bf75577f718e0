"""Visual-token reduction: K image tokens per image into the language model (`--image-tokens K`).

    from vlmslim.tokens import TokenSpec, reducing, reduce_placeholders
"""

from vlmslim.tokens.apply import TokenSpec, check_supported, reduce_placeholders, reducing
from vlmslim.tokens.reducers import REDUCERS, reduce

__all__ = ["REDUCERS", "TokenSpec", "check_supported", "reduce", "reduce_placeholders", "reducing"]
