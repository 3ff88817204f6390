"""The demo's sample corpus, written for this project: short articles where word overlap and
meaning disagree, so the difference between lexical and reranked order is easy to see."""

from __future__ import annotations

DEMO_INDEX = "rerank-demo"

DEMO_QUERIES = [
    "fix a flat bicycle tire",
    "how to keep a laptop battery healthy",
    "why is the sky blue",
]

DEMO_DOCS: list[dict[str, str]] = [
    # fix a flat bicycle tire
    {"title": "Repairing a punctured bike tyre",
     "body": "Take the wheel off, pull out the inner tube, find the hole, patch it and pump it back up."},
    {"title": "Flat tire on your car?",
     "body": ("A flat tire on the motorway: switch on the hazard lights and call roadside assistance. "
              "Do not fix it yourself.")},
    {"title": "Bicycle tire pressure guide",
     "body": "Road bicycle tires run at higher pressure than mountain bike tires; check the sidewall."},
    {"title": "Flat design in user interfaces",
     "body": "Flat design removes shadows and gradients. How to fix a cluttered layout with a flat style."},
    {"title": "Tubeless tyre sealant",
     "body": "Sealant inside a tubeless bike tyre closes small punctures while you ride."},
    {"title": "Choosing a new bicycle",
     "body": "City bikes, road bikes and mountain bikes: which bicycle fits your commute."},
    # how to keep a laptop battery healthy
    {"title": "Lithium-ion care",
     "body": "Keep the charge between 20 and 80 percent and avoid heat to make a notebook's cells last longer."},
    {"title": "Laptop buying guide",
     "body": "How to choose a laptop: screen, keyboard, battery life in hours, and weight."},
    {"title": "Healthy breakfast ideas",
     "body": "How to keep a healthy diet: oats, fruit and yogurt keep you full until lunch."},
    {"title": "Battery recycling",
     "body": "Old car and laptop batteries must go to a recycling point, never into household waste."},
    {"title": "Power settings that save your cells",
     "body": "Enable the charge limit in your notebook's firmware so the pack is not held at 100 percent all day."},
    {"title": "Keep your laptop cool",
     "body": "A laptop stand and clean vents keep temperatures down; heat is what ages the battery fastest."},
    # why is the sky blue
    {"title": "Rayleigh scattering",
     "body": ("Short wavelengths of sunlight scatter off air molecules much more than long ones, "
              "so the daytime sky looks blue.")},
    {"title": "Blue whales",
     "body": "Why is the blue whale so large? The sky is the limit for the biggest animal on earth."},
    {"title": "Sunsets explained",
     "body": "At sunset light crosses more atmosphere; the blue is scattered away and reds and oranges remain."},
    {"title": "Painting a blue sky",
     "body": "Mix ultramarine with white and keep the sky lighter near the horizon."},
    {"title": "Why the ocean looks blue",
     "body": "Water absorbs red light and reflects some of the sky's colour, which is why the sea looks blue."},
    {"title": "Weather forecast",
     "body": "A clear sky tomorrow with blue skies in the morning and clouds later."},
]
