"""From SAE latents to intents: word alignment (eq. 2), activation statistics, judge prompts,
verdict parsing, judge backends and quality measures. Nothing here knows Ray or storage."""
