"""The fixed prompts every benchmark uses, so runs on different days measure the same work.

Both ask for long answers: decode speed is averaged over the generated tokens, and an early end-of-sequence
would leave few of them. The long prompt is ~500 tokens with SmolLM2's chat template (its default system
prompt included); its text is original, written for this purpose.
"""

from __future__ import annotations

SHORT_PROMPT = "Write a story about a lighthouse keeper who finds a message in a bottle."

_PASSAGE = (
    "The harbour town of Karsund sits at the mouth of a narrow fjord, where the water stays dark even in summer. "
    "For three hundred years its people lived from herring, and the rhythm of the town followed the fish: boats "
    "left before dawn in the cold months, the smokehouses burned through the night, and the church bell rang "
    "whenever a crew failed to return. When the herring vanished in the nineteen fifties, nobody could say why; "
    "some blamed the new trawlers from the south, others a change in the currents.\n\n"
    "The town shrank. Young families moved to the cities, the school closed one classroom at a time, and the "
    "great wooden warehouses on the quay stood empty, their windows boarded against the winter storms. The "
    "lighthouse on the outer skerry was automated in nineteen seventy-one, and its last keeper, a quiet man "
    "named Aksel Dahl, moved into a small red house above the harbour, from where he could still see the light "
    "turning every night. He kept a logbook anyway, out of habit: the weather, the ships that passed, the "
    "colour of the water, and now and then a line about something he had found on the shore.\n\n"
    "In the eighties a marine biologist from Bergen rented the old customs house for a summer to study the "
    "kelp forests at the fjord mouth. She stayed for eleven years. Her measurements showed that the water "
    "in the fjord had warmed by almost a degree, that the kelp was retreating, and that a small population "
    "of cod had begun to spawn in the sheltered inner basin, where no one had fished for decades. With the "
    "help of Aksel's logbooks, which recorded sea temperatures going back to the war, she reconstructed how "
    "the fjord had changed, year by year, and published a paper that is still cited today.\n\n"
    "Today Karsund has a research station, a small hotel, and a museum in one of the warehouses, where "
    "Aksel's logbooks lie in a glass case next to a rusted herring barrel. Visitors come for the silence and "
    "the light. Fishing has returned on a small scale, governed by strict quotas that the town itself voted "
    "for, and the church bell has not rung for a lost crew in forty years."
)

LONG_PROMPT = (
    _PASSAGE
    + "\n\nContinue this history of Karsund: write the next chapter, describing the town thirty years from now, "
    "in several detailed paragraphs."
)

PROMPTS = {"short": SHORT_PROMPT, "long": LONG_PROMPT}
