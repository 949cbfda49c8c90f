"""The words of `sfumato data scenes`: which emoji are objects, what captions call them, colours and plurals.

Objects are the fully-qualified single emoji (no skin tones, no ZWJ sequences) of the subgroups below — animals,
plants, food and drink, buildings, vehicles, weather, sport, clothing, instruments, tools, household things — less
the ones that are scenes, faces or near-duplicates (`EXCLUDE`). Each keeps its CLDR name (Unicode) and gets a short
name for composed captions ("automobile" -> "car"); `SYNONYMS` adds the words people also use.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from sfumato.training.emoji_data import Emoji, parse_emoji_test

SUBGROUPS = {
    "animal-mammal": "animals", "animal-bird": "animals", "animal-amphibian": "animals", "animal-reptile": "animals",
    "animal-marine": "animals", "animal-bug": "animals", "plant-flower": "plants", "plant-other": "plants",
    "food-fruit": "food", "food-vegetable": "food", "food-prepared": "food", "food-asian": "food",
    "food-marine": "food", "food-sweet": "food", "drink": "food", "dishware": "objects",
    "place-building": "buildings", "transport-ground": "vehicles", "transport-water": "vehicles",
    "transport-air": "vehicles", "sky & weather": "weather", "sport": "objects", "game": "objects",
    "clothing": "objects", "musical-instrument": "objects", "tool": "objects", "household": "objects",
}

EXCLUDE = set("""
monkey face;dog face;guide dog;cat face;tiger face;horse face;cow face;pig face;pig nose;mouse face;rabbit face;
paw prints;two-hump camel;hatching chick;front-facing baby chick;wing;dragon face;spouting whale;coral;microbe;
spider web;wilted flower;leaf fluttering in wind;empty nest;cooking;shallow pan of food;clinking beer mugs;
clinking glasses;pouring liquid;fork and knife;stadium;classical building;building construction;derelict house;
houses;Japanese post office;love hotel;wedding;Tokyo tower;Statue of Liberty;hotel;convenience store;bank;
department store;railway car;bullet train;metro;light rail;station;monorail;mountain railway;tram car;oncoming bus;
trolleybus;oncoming police car;oncoming taxi;oncoming automobile;manual wheelchair;motorized wheelchair;bus stop;
motorway;railway track;oil drum;police car light;horizontal traffic light;construction;airplane departure;
airplane arrival;seat;suspension railway;mountain cableway;aerial tramway;passenger ship;ferry;
new moon;waxing crescent moon;first quarter moon;waxing gibbous moon;full moon;waning gibbous moon;
last quarter moon;waning crescent moon;new moon face;first quarter moon face;last quarter moon face;
full moon face;sun with face;thermometer;glowing star;milky way;sun behind small cloud;sun behind large cloud;
sun behind rain cloud;cloud with lightning and rain;wind face;fog;umbrella on ground;umbrella with rain drops;
high voltage;snowman without snow;softball;cricket game;field hockey;lacrosse;goal net;flag in hole;
running shirt;spade suit;heart suit;diamond suit;club suit;joker;mahjong red dragon;flower playing cards;
slot machine;lab coat;safety vest;briefs;bikini;woman’s clothes;clutch bag;thong sandal;flat shoe;hair pick;
prayer beads;rescue worker’s helmet;military helmet;hammer and pick;hammer and wrench;crossed swords;
balance scale;white cane;link;chains;plunger;mouse trap;lotion bottle;safety pin;roll of paper;
couch and lamp;long drum;kitchen knife;dagger;bomb;water pistol;bow and arrow;nesting dolls;
fish cake with swirl;oden;dango;stuffed flatbread;tamale;fondue;canned food;beverage box;mate;sake
""".replace("\n", "").split(";")) - {""}

SHORT = {
    "automobile": "car", "sport utility vehicle": "suv", "articulated lorry": "lorry", "ear of corn": "corn",
    "kiwi fruit": "kiwi", "baguette bread": "baguette", "teacup without handle": "teacup",
    "fork and knife with plate": "plate", "soft ice cream": "ice cream cone", "ice cream": "sundae",
    "hot beverage": "coffee", "cooked rice": "rice bowl", "steaming bowl": "noodle bowl", "beer mug": "beer",
    "glass of milk": "milk", "leafy green": "lettuce", "hot pepper": "chili pepper", "lady beetle": "ladybug",
    "honeybee": "bee", "evergreen tree": "pine tree", "deciduous tree": "tree", "potted plant": "potted plant",
    "motor scooter": "scooter", "musical keyboard": "keyboard", "american football": "football",
    "rugby football": "rugby ball", "game die": "die", "pool 8 ball": "eight ball", "video game": "game controller",
    "billed cap": "cap", "man’s shoe": "shoe", "running shoe": "sneaker", "high-heeled shoe": "high heel",
    "woman’s hat": "sun hat", "woman’s sandal": "sandal", "woman’s boot": "boot", "fire engine": "fire truck",
    "delivery truck": "truck", "racing car": "race car", "pot of food": "stew", "bowl with spoon": "cereal bowl",
    "green salad": "salad", "poultry leg": "chicken leg", "cut of meat": "steak", "cheese wedge": "cheese",
    "bottle with popping cork": "champagne", "cocktail glass": "cocktail", "tumbler glass": "whiskey glass",
    "cup with straw": "soda cup", "spiral shell": "shell", "roasted sweet potato": "sweet potato",
    "high-speed train": "fast train", "small airplane": "small plane", "motor boat": "motorboat",
    "flying disc": "frisbee", "one-piece swimsuit": "swimsuit", "folding hand fan": "fan", "shopping bags": "bags",
    "graduation cap": "graduation cap", "ping pong": "ping pong paddle", "martial arts uniform": "karate suit",
    "fishing pole": "fishing rod", "diving mask": "diving mask", "curling stone": "curling stone",
    "crystal ball": "crystal ball", "mirror ball": "disco ball", "chess pawn": "chess pawn", "teddy bear": "teddy bear",
    "rice cracker": "rice cracker", "rice ball": "rice ball", "curry rice": "curry", "fried shrimp": "tempura",
    "moon cake": "mooncake", "fortune cookie": "fortune cookie", "takeout box": "takeout box",
    "birthday cake": "birthday cake", "shortcake": "cake", "chocolate bar": "chocolate", "honey pot": "honey",
    "baby bottle": "baby bottle", "tropical drink": "tropical drink", "bubble tea": "bubble tea",
    "meat on bone": "meat", "french fries": "fries", "bento box": "bento", "tropical fish": "tropical fish",
    "sheaf of rice": "rice plant", "four leaf clover": "four-leaf clover", "maple leaf": "maple leaf",
    "fallen leaf": "fallen leaf", "nest with eggs": "nest", "cherry blossom": "cherry blossom",
    "white flower": "white flower", "T-Rex": "t-rex", "sauropod": "dinosaur", "water buffalo": "buffalo",
    "crescent moon": "moon", "sun": "sun", "star": "star", "shooting star": "shooting star",
    "cloud with rain": "rain cloud", "cloud with snow": "snow cloud", "cloud with lightning": "storm cloud",
    "sun behind cloud": "sun behind a cloud", "closed umbrella": "closed umbrella", "water wave": "wave",
    "fuel pump": "gas pump", "vertical traffic light": "traffic light", "stop sign": "stop sign",
    "ring buoy": "life ring", "sailboat": "sailboat", "passenger ship": "cruise ship", "flying saucer": "ufo",
    "amphora": "vase", "Japanese castle": "japanese castle", "office building": "office building",
    "house with garden": "house with a garden", "post office": "post office", "ferris wheel": "ferris wheel",
    "roller coaster": "roller coaster", "carousel horse": "carousel horse", "playground slide": "slide",
    "circus tent": "circus tent", "barber pole": "barber pole", "hot springs": "hot spring",
    "gem stone": "gem", "nut and bolt": "bolt", "carpentry saw": "saw", "shopping cart": "shopping cart",
    "fire extinguisher": "fire extinguisher", "toolbox": "toolbox", "bathtub": "bathtub", "tennis": "tennis ball",
    "bowling": "bowling ball", "badminton": "shuttlecock", "ice hockey": "hockey stick", "pick": "pickaxe",
}

SYNONYMS = {
    "car": ["automobile"], "suv": ["jeep"], "bee": ["honeybee"], "ladybug": ["ladybird"], "coffee": ["hot drink", "tea"],
    "frisbee": ["flying disc"], "die": ["dice"], "tree": ["oak tree"], "t-rex": ["tyrannosaurus"],
    "dinosaur": ["brontosaurus"], "bicycle": ["bike"], "motorcycle": ["motorbike"], "airplane": ["plane", "jet"],
    "lorry": ["semi truck"], "dog": ["puppy"], "cat": ["kitty"], "rabbit": ["bunny"], "ship": ["boat"],
    "fries": ["french fries", "chips"], "sneaker": ["running shoe"], "glasses": ["eyeglasses"], "rock": ["stone"],
    "house": ["home"], "rocket": ["spaceship"], "ufo": ["flying saucer"], "cake": ["strawberry cake"],
}

IRREGULAR = {"mouse": "mice", "goose": "geese", "ox": "oxen", "sheep": "sheep", "deer": "deer", "fish": "fish",
             "bison": "bison", "moose": "moose", "knife": "knives", "leaf": "leaves", "wolf": "wolves",
             "scarf": "scarves", "potato": "potatoes", "tomato": "tomatoes", "mango": "mangoes", "t-rex": "t-rexes",
             "jellyfish": "jellyfish", "shrimp": "shrimp", "squid": "squid", "die": "dice", "bags": "bags of shopping"}

# Nouns counted through a container or a pair: (singular prefix, plural prefix).
MEASURES = {
    "jeans": ("a pair of", "pairs of"), "glasses": ("a pair of", "pairs of"), "sunglasses": ("a pair of", "pairs of"),
    "goggles": ("a pair of", "pairs of"), "gloves": ("a pair of", "pairs of"), "socks": ("a pair of", "pairs of"),
    "shorts": ("a pair of", "pairs of"), "skis": ("a pair of", "pairs of"), "chopsticks": ("a pair of", "pairs of"),
    "ballet shoes": ("a pair of", "pairs of"), "maracas": ("a pair of", "pairs of"),
    "pancakes": ("a stack of", "stacks of"), "beans": ("a handful of", "handfuls of"),
    "peanuts": ("a handful of", "handfuls of"), "grapes": ("a bunch of", "bunches of"),
    "cherries": ("a pair of", "pairs of"), "blueberries": ("a handful of", "handfuls of"),
    "bubbles": ("a cluster of", "clusters of"), "fries": ("a box of", "boxes of"), "popcorn": ("a box of", "boxes of"),
    "spaghetti": ("a plate of", "plates of"), "bread": ("a loaf of", "loaves of"), "milk": ("a glass of", "glasses of"),
    "wood": ("a log of", "logs of"), "butter": ("a block of", "blocks of"), "ice": ("a cube of", "cubes of"),
    "honey": ("a pot of", "pots of"), "salt": ("a shaker of", "shakers of"), "curry": ("a plate of", "plates of"),
    "stew": ("a pot of", "pots of"), "champagne": ("a bottle of", "bottles of"), "meat": ("a piece of", "pieces of"),
    "cheese": ("a piece of", "pieces of"), "chocolate": ("a bar of", "bars of"), "coffee": ("a cup of", "cups of"),
    "beer": ("a mug of", "mugs of"), "lettuce": ("a head of", "heads of"), "corn": ("an ear of", "ears of"),
    "sushi": ("a piece of", "pieces of"), "tempura": ("a piece of", "pieces of"), "bacon": ("a strip of", "strips of"),
    "bags": ("a set of", "sets of"), "salad": ("a bowl of", "bowls of"),
}

NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}

# Named colours: RGB for backgrounds, (hue, saturation, value scale) for tinting a sprite; hue None = grey scale.
COLOURS: dict[str, tuple[tuple[int, int, int], tuple[float | None, float, float]]] = {
    "red": ((220, 50, 47), (0.0, 0.85, 1.0)),
    "orange": ((245, 140, 40), (0.075, 0.9, 1.0)),
    "yellow": ((250, 215, 60), (0.15, 0.9, 1.1)),
    "green": ((70, 170, 70), (0.33, 0.8, 0.9)),
    "blue": ((50, 100, 220), (0.61, 0.85, 1.0)),
    "purple": ((140, 70, 190), (0.78, 0.75, 0.95)),
    "pink": ((245, 150, 200), (0.91, 0.45, 1.15)),
    "brown": ((130, 85, 50), (0.07, 0.7, 0.6)),
    "black": ((25, 25, 25), (None, 0.0, 0.3)),
    "gray": ((150, 150, 150), (None, 0.0, 0.85)),
    "white": ((255, 255, 255), (None, 0.0, 1.6)),
}
BACKGROUNDS = ["white", *[c for c in COLOURS if c != "white"]]
GRADIENTS = {  # name: (caption phrase, top RGB, bottom RGB, ground RGB or None)
    "sky": ("in the sky", (110, 170, 240), (215, 235, 255), None),
    "grass": ("on the grass", (160, 205, 250), (225, 240, 255), (90, 170, 60)),
    "night": ("at night", (10, 15, 50), (40, 50, 110), None),
}


@dataclass(frozen=True)
class SceneObject:
    emoji: Emoji
    short: str  # the word composed captions use
    category: str  # animals, plants, food, buildings, vehicles, weather, objects

    @property
    def name(self) -> str:
        return self.emoji.name

    @property
    def tintable(self) -> bool:
        """Objects named by a colour ("red apple", "white flower") keep their own colour."""
        return self.short.split()[0] not in COLOURS and self.name.split()[0] not in COLOURS

    def words(self) -> list[str]:
        return [self.short, *SYNONYMS.get(self.short, [])]


def plural(noun: str) -> str:
    if noun in IRREGULAR:
        return IRREGULAR[noun]
    for joint in (" of ", " with ", " behind "):
        if joint in noun:
            head, _, tail = noun.partition(joint)
            return f"{plural(head)}{joint}{tail}"
    words = noun.split()
    last = words[-1]
    if last in IRREGULAR:
        words[-1] = IRREGULAR[last]
    elif last.endswith(("s", "x", "ch", "sh", "z")):
        words[-1] = last + "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        words[-1] = last[:-1] + "ies"
    else:
        words[-1] = last + "s"
    return " ".join(words)


def article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


@lru_cache(maxsize=1)
def vocabulary() -> tuple[SceneObject, ...]:
    """The scene objects, in emoji-test.txt order (read once per process)."""
    objects, seen = [], set()
    for emoji in parse_emoji_test():
        if (emoji.subgroup not in SUBGROUPS or not emoji.base or 0x200D in emoji.codepoints
                or emoji.name in EXCLUDE):
            continue
        short = SHORT.get(emoji.name, emoji.name).lower()
        if short in seen:
            continue
        seen.add(short)
        objects.append(SceneObject(emoji, short, SUBGROUPS[emoji.subgroup]))
    return tuple(objects)


def tint(sprite: Image.Image, colour: str) -> Image.Image:
    """Recolour a sprite to a named colour, keeping its shading (hue replaced, saturation and value mapped)."""
    hue, saturation, value_scale = COLOURS[colour][1]
    rgba = np.asarray(sprite.convert("RGBA"), dtype=np.float32) / 255.0
    hsv = np.asarray(sprite.convert("RGB").convert("HSV"), dtype=np.float32) / 255.0
    value = np.clip(hsv[..., 2] * value_scale, 0.0, 1.0)
    if colour == "white":
        value = np.clip(0.55 + 0.45 * hsv[..., 2] * 1.3, 0.0, 1.0)
    value = np.clip(value_scale * (0.25 + 0.75 * hsv[..., 2]), 0.0, 1.0) if colour != "white" else value
    h = np.full_like(value, hue or 0.0)
    s = saturation * (0.75 + 0.25 * hsv[..., 1]) if hue is not None else np.zeros_like(value)
    out = np.stack([h, s, value], axis=-1)
    rgb = Image.fromarray((out * 255).round().astype(np.uint8), "HSV").convert("RGB")
    result = rgb.convert("RGBA")
    result.putalpha(Image.fromarray((rgba[..., 3] * 255).astype(np.uint8)))
    return result


def _hue_name(h: float) -> str:
    named = [(c, spec[1][0]) for c, spec in COLOURS.items() if spec[1][0] is not None and c != "brown"]
    return min(named, key=lambda item: min(abs(h - item[1]), 1 - abs(h - item[1])))[0]


def colour_name(sprite: Image.Image) -> str:
    """The named colour most of a sprite's opaque pixels have (for detector labels of untinted objects)."""
    rgba = np.asarray(sprite.convert("RGBA"), dtype=np.float32) / 255.0
    opaque = rgba[..., 3] > 0.5
    if not opaque.any():
        return "white"
    pixels = rgba[..., :3][opaque]
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in pixels[:: max(1, len(pixels) // 400)]])
    saturated = hsv[(hsv[:, 1] > 0.3) & (hsv[:, 2] > 0.25)]
    if len(saturated) < 0.25 * len(hsv):
        v = float(np.median(hsv[:, 2]))
        return "black" if v < 0.3 else "white" if v > 0.85 else "gray"
    angles = saturated[:, 0] * 2 * np.pi
    h = float(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean()) / (2 * np.pi)) % 1.0
    name = _hue_name(h)
    if name in ("orange", "red") and float(np.median(saturated[:, 2])) < 0.6:
        return "brown"
    return name
