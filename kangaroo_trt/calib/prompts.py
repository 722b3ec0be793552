"""Text for INT8 calibration and for the INT8 quality report, written for this project.

Neither set overlaps Spec-Bench or MT-Bench (the benchmark prompts), and the two sets do not overlap each
other: scales are fitted on ``CALIBRATION_PROMPTS`` and judged on ``HELD_OUT_TEXT`` / ``HELD_OUT_PROMPTS``.
The calibration prompts mix chat, code, arithmetic, lists and prose so that the captured activations
cover the ranges a chat model meets.
"""

CALIBRATION_PROMPTS = (
    "Explain how a refrigerator keeps food cold, in three short paragraphs.",
    "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "List five practical tips for someone learning to play the guitar as an adult.",
    "What is the difference between weather and climate? Give one example of each.",
    "Translate into French: 'The train leaves at seven, so we should have breakfast early.'",
    "A shop sells pencils at 3 for 45 cents. How much do 12 pencils cost? Show the steps.",
    "Summarise the plot of a story about a lighthouse keeper who finds a message in a bottle.",
    "Write a haiku about autumn leaves falling into a river.",
    "Describe the water cycle to a ten-year-old.",
    "Give me a SQL query that counts orders per customer and keeps customers with more than ten orders.",
    "Why do cats purr? Mention at least two hypotheses.",
    "Draft a polite email asking a landlord to fix a leaking kitchen tap.",
    "Compare bicycles and electric scooters for a 5 km daily commute.",
    "Explain what a hash table is and why lookups are fast on average.",
    "Write a short dialogue between a chef and a customer who is allergic to nuts.",
    "What are the main causes of inflation? Answer with a numbered list.",
)

# Held-out: teacher-forced agreement is measured on this text, acceptance on these prompts.
HELD_OUT_TEXT = (
    "Gardening in small spaces starts with light. Most vegetables want six hours of direct sun, so a balcony "
    "facing south can grow tomatoes, peppers and beans, while a shaded courtyard suits lettuce, mint and "
    "parsley. Containers dry out quickly: water deeply in the morning, and choose pots with drainage holes so "
    "roots never sit in standing water. A bag of good compost mixed into the soil each spring replaces the "
    "nutrients the plants took the year before.\n\n"
    "def merge_sorted(a, b):\n"
    "    i = j = 0\n"
    "    out = []\n"
    "    while i < len(a) and j < len(b):\n"
    "        if a[i] <= b[j]:\n"
    "            out.append(a[i]); i += 1\n"
    "        else:\n"
    "            out.append(b[j]); j += 1\n"
    "    return out + a[i:] + b[j:]\n\n"
    "The history of the postal service is a history of roads. Couriers on horseback carried letters between "
    "relay stations a day's ride apart, and the speed of news was the speed of a tired horse. Railways cut a "
    "week's journey to a day, and stamps made the sender, not the receiver, pay for delivery, which turned "
    "letter writing into an everyday habit for millions of people."
)

HELD_OUT_PROMPTS = (
    "How should I prepare for a job interview at a small software company?",
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain why the sky looks red at sunset.",
)
