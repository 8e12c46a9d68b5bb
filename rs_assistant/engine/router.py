"""The instruction router: which task answers a free-text turn, and with what prompt (RS-MoE's router, as rules).

    .venv/bin/python benchmarks/router.py          # accuracy per intent and language, and the confusion pairs
    .venv/bin/python -m pytest -p no:pytest_qgis -p no:pytest-qt tests/engine/test_router.py -s
    python -m rs_assistant.engine route "how many cars are there?" [--images 2] [--history JSON] [--model NAME]

A transparent rule set, no model: every intent (protocol.Intent: caption, ground, segment, change,
count, retrieve, chat) has weighted patterns in English and French, matched on the lower-cased text
without accents; the best score wins, and how far it leads the runner-up is the confidence. The
labelled phrasings in ``tests/engine/router_phrasings.jsonl`` are its test set.

- The object (for ground, segment, count, retrieve) is what is left once the request's own words
  (verbs, question words, "in this image", politeness) are taken off both ends: "how many cars are
  there?" -> "cars". French objects are put into English ("les bâtiments" -> "buildings") since the
  models are prompted in English.
- Context: the last request of the history (as typed: "/find buildings" or a sentence) gives the
  task and the object of a follow-up: "and the largest one?" after a find looks for "the largest
  building"; "how many?" counts the same things; "and the roads?" runs the same task on roads.
- ``images`` 2 (a before and an after) tips "what's new?"-style questions to change.
- A model with a fixed class list (the built-in RSA model: ``class_names``/``class_nouns`` of its
  config.json, see :func:`classes_for`): an object it knows under another name goes under that name
  ("water" -> "water bodies"); one it does not know at all makes ``known_classes`` list what it knows.
- Ambiguity is said, not hidden: a bare noun ("buildings") is found, with ``assumed`` saying so; two
  tasks that fit almost as well give an ``assumed`` naming the one chosen and how to force the other.

Pure standard library, so that front ends and tests can import it without torch.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from rs_assistant.core.protocol import Intent, Message, Role, RouteRequest, RouteResult, Task

log = logging.getLogger(__name__)

#: Under this lead over the runner-up, the choice is said in ``assumed``.
CLOSE_CALL = 1.5

SLASH = {
    "describe": Intent.CAPTION,
    "find": Intent.GROUND,
    "segment": Intent.SEGMENT,
    "change": Intent.CHANGE,
    "count": Intent.COUNT,
    "search": Intent.RETRIEVE,
    "ask": Intent.CHAT,
}
SLASH_OF = {
    Intent.CAPTION: "/describe",
    Intent.GROUND: "/find",
    Intent.SEGMENT: "/segment",
    Intent.CHANGE: "/change",
    Intent.COUNT: "/count",
    Intent.RETRIEVE: "/search",
    Intent.CHAT: "/ask",
}
#: Intents whose prompt is an object phrase.
OBJECT_INTENTS = frozenset({Intent.GROUND, Intent.SEGMENT, Intent.COUNT, Intent.RETRIEVE})
WHAT = {
    Intent.CAPTION: "a description",
    Intent.GROUND: "a find",
    Intent.SEGMENT: "outlines",
    Intent.CHANGE: "a comparison",
    Intent.COUNT: "a count",
    Intent.RETRIEVE: "a search of the layer",
    Intent.CHAT: "a question",
}

# --- the patterns: (regex on the accent-free lower-case text, weight) --------------------------

_P = dict[Intent, list[tuple[str, float]]]
PATTERNS: _P = {
    Intent.COUNT: [
        (r"\bhow many\b", 3.5),
        (r"\bcount(s|ing)?\b", 3.0),
        (r"\bnumber of\b", 3.0),
        (r"\btally\b", 2.5),
        (r"\bquantity of\b", 2.5),
        (r"\benumerate\b", 2.5),
        (r"\bhow much (\w+ )?(are|is) there\b", 1.0),
        (r"\bcombien\b", 3.5),
        (r"\bcompte(r|z|s)?\b", 3.0),
        (r"\bnombre (de|d)\b", 3.0),
        (r"\bdenombre(r|z)?\b", 3.0),
        (r"\bcomptabilise(r|z)?\b", 3.0),
        (r"\bquantite de\b", 2.5),
        (r"\bquel est le nombre\b", 1.0),
    ],
    Intent.GROUND: [
        (r"\bfind\b", 2.5),
        (r"\blocate\b", 3.0),
        (r"\bdetect(s|ion)?\b", 3.0),
        (r"\bwhere (is|are|'s|were)\b", 3.0),
        (r"\bwhere\b", 1.5),
        (r"\bshow( me)?\b", 2.0),
        (r"\bmark\b", 2.5),
        (r"\bhighlight\b", 2.5),
        (r"\bpoint( out| to)?\b", 2.0),
        (r"\bspot\b", 2.0),
        (r"\bpick out\b", 2.5),
        (r"\bidentify\b", 2.5),
        (r"\bbox(es)?\b", 2.5),
        (r"\bbounding\b", 2.0),
        (r"\bground(ing)?\b", 2.5),
        (r"\bflag\b", 2.0),
        (r"\blook(ing)? for\b", 2.5),
        (r"\bsearch for\b", 1.5),
        (r"\bget me\b", 1.0),
        (r"\blist (all |the )?\b", 1.5),
        (r"\bput a box\b", 1.0),
        (r"\bcircle\b", 2.0),
        (r"\blargest|biggest|smallest\b", 0.5),
        (r"\btrouve(r|z|s)?\b", 2.5),
        (r"\blocalise(r|z)?\b", 3.0),
        (r"\bdetecte(r|z)?\b", 3.0),
        (r"\bou (est|sont|se trouvent?|sont situes?|y a)\b", 3.0),
        (r"\bou\b.*\?", 1.0),
        (r"\bmontre(r|z)?\b", 2.0),
        (r"\brepere(r|z)?\b", 2.5),
        (r"\bindique(r|z)?\b", 2.0),
        (r"\bencadre(r|z)?\b", 3.0),
        (r"\bsignale(r|z)?\b", 2.0),
        (r"\bidentifie(r|z)?\b", 2.5),
        (r"\bpointe(r|z)?\b", 2.0),
        (r"\bsurligne(r|z)?\b", 2.5),
        (r"\bcherche(r|z)?\b", 1.5),
        (r"\bmets? en evidence\b", 2.5),
        (r"\bboites?\b", 2.0),
        (r"\bplus (grand|gros|petit|long)e?s?\b", 0.5),
    ],
    Intent.SEGMENT: [
        (r"\bsegment(s|ation|ed)?\b", 3.5),
        (r"\boutlines?\b", 3.5),
        (r"\bmasks?\b", 3.0),
        (r"\bdelineat", 3.5),
        (r"\btrace\b", 2.5),
        (r"\bcontours?\b", 3.0),
        (r"\bfootprints?\b", 3.0),
        (r"\bmap (out )?(the|all|every)\b", 3.0),
        (r"\bboundar(y|ies)\b", 3.0),
        (r"\bpolygons?\b", 3.0),
        (r"\bshapes? of\b", 2.5),
        (r"\bextent of\b", 2.5),
        (r"\b(surface )?area (of|covered)\b", 2.5),
        (r"\bcovered by\b", 2.0),
        (r"\bhow much (of|land|area|surface)\b", 2.5),
        (r"\bhow much\b", 1.0),
        (r"\bpixels?\b", 2.0),
        (r"\bdraw\b", 1.5),
        (r"\bcolou?r in\b", 2.5),
        (r"\bfill\b", 1.0),
        (r"\bexact shape\b", 2.0),
        (r"\bedges? of\b", 2.0),
        (r"\bvectori[sz]e\b", 3.0),
        (r"\bdigiti[sz]e\b", 3.0),
        (r"\bsegmente(r|z)?\b", 3.5),
        (r"\bdelimite(r|z)?\b", 3.5),
        (r"\bcontourne(r|z)?\b", 2.5),
        (r"\bdetoure(r|z)?\b", 3.5),
        (r"\bmasques?\b", 3.0),
        (r"\bemprises?\b", 3.0),
        (r"\bsuperficie\b", 3.0),
        (r"\bsurface (de|des|du|d|occupee|couverte)\b", 3.0),
        (r"\bcartographie(r|z)?\b", 3.0),
        (r"\bdessine(r|z)?\b", 2.0),
        (r"\bpolygones?\b", 3.0),
        (r"\blimites?\b", 2.5),
        (r"\bforme(s)? (de|des|du|exacte)\b", 2.5),
        (r"\bvectorise(r|z)?\b", 3.0),
        (r"\bnumerise(r|z)?\b", 3.0),
        (r"\bquelle (part|proportion|surface)\b", 2.5),
        (r"\bcouvert(e|s|es)? par\b", 2.5),
        (r"\bcolorie(r|z)?\b", 2.5),
    ],
    Intent.CAPTION: [
        (r"\bdescri(be|ption|bing)\b", 4.0),
        (r"\bcaption\b", 4.0),
        (r"\bsummar(y|ise|ize)\b", 3.5),
        (r"\boverview\b", 3.0),
        (r"\bwhat (do|can) (you|i|we) see\b", 3.5),
        (r"\bwhat('s| is) (in|on|shown|visible|here|this|going on)\b", 3.0),
        (r"\bwhat does (this|the|it)( \w+)? (show|look|depict|contain)\b", 3.5),
        (r"\btell me what (this|it|that)\b", 3.0),
        (r"\bwhat (is|am i) looking at\b", 3.5),
        (r"\btell me about (this|the|it|what)\b", 3.0),
        (r"\bwhat kind of (place|area|scene|landscape|region)\b", 2.0),
        (r"\bexplain (this|the) (image|scene|area|region|picture)\b", 3.0),
        (r"\bgive me a (quick )?(rundown|description|summary)\b", 2.0),
        (r"\bwhat('s| is) (there|happening)\b", 1.5),
        (r"\bwhat('s| is) this\b", 2.0),
        (r"\bdepict", 2.5),
        (r"\bdecri(s|re|vez|ption)\b", 4.0),
        (r"\blegende\b", 3.5),
        (r"\bresume(r|z)?\b", 3.5),
        (r"\bapercu\b", 3.0),
        (r"\bqu'?est[- ]ce (qu'?on|que l'?on|que tu|que je) (voit|vois)\b", 3.5),
        (r"\bque (vois|voit)[- ](tu|on)\b", 3.5),
        (r"\bqu'?y a[- ]t[- ]il (ici|dans|sur)\b", 2.5),
        (r"\bque montre\b", 3.5),
        (r"\bde quoi (s'?agit|a l'?air)\b", 3.5),
        (r"\bparle[- ]moi de (cette|cet|ce|l'?image|la zone)\b", 3.0),
        (r"\bqu'?est[- ]ce que c'?est\b", 4.0),
        (r"\bqu'?est[- ]ce qu'?il y a\b", 2.0),
        (r"\bquel (type|genre) de (paysage|zone|lieu|endroit)\b", 3.5),
        (r"\bpresente(r|z)?[- ]moi\b", 2.0),
        (r"\bexplique[- ]moi (cette|l'?image|la scene)\b", 3.0),
    ],
    Intent.CHANGE: [
        (r"\bchange(d|s)?\b", 4.0),
        (r"\bchanging\b", 3.0),
        (r"\bdifferen(ce|ces|t)\b", 3.5),
        (r"\bdiffer\b", 3.0),
        (r"\bcompar(e|ison|ing)\b", 3.5),
        (r"\bbefore and after\b", 3.0),
        (r"\bbetween (the )?(two|both|2) (images|dates|layers)\b", 3.0),
        (r"\b(appeared|disappeared|vanished|gone|demolished|destroyed|removed|torn down)\b", 3.0),
        (r"\bevol(ve|ved|ution)\b", 3.0),
        (r"\bsince (the )?(before|first|earlier|last)\b", 2.5),
        (r"\bnew(ly)? (built|construction|buildings?|roads?)\b", 2.0),
        (r"\b(got )?built\b", 1.5),
        (r"\bdamage(d)?\b", 2.0),
        (r"\bmodif(ied|ication)", 2.5),
        (r"\bany (changes?|difference)\b", 1.0),
        (r"\bthen and now\b", 3.0),
        (r"\bover time\b", 2.5),
        (r"\bchangements?\b", 4.0),
        (r"\bchange\b", 1.0),
        (r"\ba change\b", 3.0),
        (r"\bont change\b", 3.0),
        (r"\bcompare(r|z)?\b", 3.5),
        (r"\bavant et apres\b", 3.0),
        (r"\bentre les deux\b", 3.0),
        (r"\bevolue", 3.0),
        (r"\b(apparu|apparus|disparu|disparus|demoli|demolis|detruit|detruits|construits?|rase)\b", 3.0),
        (r"\bdepuis\b", 2.0),
        (r"\bnouveaux?|nouvelles?\b", 1.0),
        (r"\bdegats\b", 2.0),
        (r"\bmodifi", 2.5),
    ],
    Intent.RETRIEVE: [
        (r"\bsearch (the|this|my|across|through|in)\b", 3.0),
        (r"\bwhich tiles?\b", 4.0),
        (r"\btiles?\b", 3.0),
        (r"\blayer\b", 1.5),
        (r"\brank\b", 3.0),
        (r"\b(whole|entire|full) (layer|image|mosaic|raster|map|scene|dataset)\b", 3.0),
        (r"\bacross the (layer|image|mosaic|map)\b", 3.0),
        (r"\banywhere in\b", 3.0),
        (r"\bsimilar to\b", 2.5),
        (r"\blook like\b", 1.0),
        (r"\bparts? of the layer\b", 3.0),
        (r"\bscan\b", 2.0),
        (r"\bretriev", 3.5),
        (r"\bsearch\b", 1.5),
        (r"\b(best|top) (matches|places|spots|areas)\b", 2.5),
        (r"\bquelles? tuiles?\b", 4.0),
        (r"\btuiles?\b", 3.0),
        (r"\bcouche\b", 1.5),
        (r"\bparties de la couche\b", 2.0),
        (r"\bclasse(r|z)? les\b", 2.0),
        (r"\b(toute|toutes) (la|les) (couche|image|mosaique|raster|carte)s?\b", 3.0),
        (r"\bl'?image entiere\b", 3.0),
        (r"\bla couche entiere\b", 3.0),
        (r"\bdans la couche\b", 2.0),
        (r"\bparcour(s|ir|ez)\b", 2.0),
        (r"\brecherche(r|z)?\b", 2.5),
        (r"\bpartout dans\b", 3.0),
        (r"\bressembl", 1.5),
        (r"\bmeilleurs? endroits?\b", 2.5),
        (r"\bn'?importe ou\b", 2.5),
    ],
    Intent.CHAT: [
        (r"^(is|are|was|were|does|do|did|can|could|would|should|will|has|have)\b", 2.0),
        (r"\bis there\b", 1.5),
        (r"\bare there\b", 1.5),
        (r"\bwhy\b", 3.0),
        (r"\bwhat (colou?r|type|kind|material|season|time|year|is the|are the)\b", 1.5),
        (r"\bwhich\b", 1.0),
        (r"\bexplain\b", 1.5),
        (r"\bhow (old|big|large|wide|tall|far|dense|close|long)\b", 2.0),
        (r"\bdo you think\b", 3.0),
        (r"\b(thanks|thank you|hello|hi|ok|okay|great)\b", 2.0),
        (r"\bcould it be\b", 2.5),
        (r"\blikely\b", 1.5),
        (r"\best[- ]ce que\b", 2.0),
        (r"\by a[- ]t[- ]il\b", 1.5),
        (r"\bpourquoi\b", 3.0),
        (r"\bquel(le)?s? (est|sont|couleur|type|saison)\b", 1.5),
        (r"\bexplique\b", 1.5),
        (r"\bcomment\b", 2.0),
        (r"\bpenses[- ]tu\b", 3.0),
        (r"\b(merci|bonjour|salut|d'?accord|super)\b", 2.0),
        (r"\best[- ](il|elle|ce)\b", 1.5),
        (r"\bsont[- ](ils|elles)\b", 1.5),
        (r"\bpeut[- ](on|il|elle)\b", 1.5),
        (r"\bprobable\b", 1.5),
        (r"\bquelle (est|saison|heure|annee)\b", 1.0),
    ],
}
_COMPILED = {intent: [(re.compile(p), w) for p, w in patterns] for intent, patterns in PATTERNS.items()}

# Words about the request itself (not the object), stripped from both ends of the object phrase.
_FILLER = set(
    """
a an the all any every each some of in on at within inside across over from to for with by into onto here there this
    that
these those it its them they their what which where who how many much is are was were be been do does did can could
    would
should will shall may might must please me my us our you your i we let lets let's kindly just also now then and or
    but so
find locate detect show mark highlight point out spot pick identify box boxes bounding put around circle draw flag look
search get list give tell see present count need want would like extract create make generate produce about what
    counting number tally quantity total enumerate
segment segmentation outline outlines mask masks delineate trace contour contours footprint footprints map boundary
boundaries polygon polygons shape shapes extent area areas surface covered cover pixels colour color fill vectorise
vectorize digitise digitize exactly exact edges edge
image picture photo scene region view frame tile tiles layer mosaic raster whole entire full part parts zone window
anywhere everywhere place places spots matches best top rank retrieve scan similar like ones one thing things
any ? . , ! : ;
le la les l un une des du de d au aux ce cet cette ces ici la-bas y il ils elle elles on a t est sont se s qu que qui
    quoi
ou combien moi nous vous tu je me te lui leur leurs mon ma mes ton ta tes son sa ses notre votre
trouve trouver trouvez trouves localise localiser localisez detecte detecter detectez montre montrer montrez montres
repere reperer reperez indique indiquer indiquez encadre encadrer encadrez signale signaler signalez identifie
identifier identifiez pointe pointer pointez surligne surligner surlignez cherche chercher cherchez mets mettre
evidence boite boites tous toutes tout toute chaque quelques peux pouvez peut pourrais pourriez voudrais stp svp
plait sil s'il merci compte compter comptez comptes nombre denombre denombrer denombrez comptabilise
comptabiliser quantite segmente segmenter segmentez delimite delimiter delimitez contourne contourner detoure
detourer detourez masque masques emprise emprises superficie cartographie cartographier cartographiez dessine
dessiner dessinez polygone polygones limite limites forme formes exacte trace tracer tracez vectorise vectoriser
numerise numeriser colorie colorier image photo scene region vue zone tuile tuiles couche mosaique carte entiere
partout endroit endroits dans sur en par pour avec sous vers situe situes situee situees presents presentes
presents voit vois voir et quel quelle quels quelles donne donner donnez cree creer creez fais faire faites
veux voudrais aimerais besoin recherche rechercher recherchez parcours parcourir parcourez classe classer classez selon
pour savoir endroits endroit parties partie maintenant aussi encore again m ll re ve looking searching couverte
    couvert couvertes
occupee occupe occupees
""".split()
)
# Words that end the object when they follow it (a clause: "cars are parked", "voitures sont garées"); filler before it.
_CLAUSE = set(
    """are is were was be being sont est ont sera etaient do does did can could cross crosses traversent contain
contains contiennent show shows montrent have has qui that which who there they y ils elles il look looks
    ressemblent""".split()
)
# Participles that end the object after it ("airplanes parked at ...") but belong to it before ("parked cars").
_PARTICIPLES = set("parked gares garees located situated situes situees visible visibles".split())
# Compound nouns whose words would otherwise be taken for filler ("grass areas", "zone inondée").
_COMPOUNDS = {
    "grass areas",
    "grass area",
    "bare soil areas",
    "bare soil area",
    "flooded area",
    "flooded areas",
    "parking areas",
    "residential areas",
    "residential area",
    "industrial area",
    "industrial areas",
    "built up areas",
    "water bodies",
    "water body",
    "car parks",
    "zone inondee",
    "zones inondees",
    "zones herbeuses",
    "zone herbeuse",
    "plan d eau",
    "plans d eau",
    "cours d eau",
    "chateau d eau",
    "storage tanks",
    "parking lots",
    "parking lot",
}
# Words that are never objects even inside the phrase's span when they start or end it (verbs of being, etc.).
_FOLLOW_UP = re.compile(
    r"^(and|what about|how about|same for|now|also|then|et|et pour|et pour les|pareil pour|idem "
    r"pour|maintenant|aussi)\b"
)
_PRONOUN_ONLY = set("them those these it they ones one les en ceux celles celui celle le la l eux".split())
_SUPERLATIVE = re.compile(
    r"\b(largest|biggest|smallest|longest|tallest|widest|nearest|closest|furthest|farthest|"
    r"plus (grand|gros|petit|long|large|proche|eloigne)e?s?)\b"
)
_SUPERLATIVE_EN = {
    "plus grand": "largest",
    "plus gros": "biggest",
    "plus petit": "smallest",
    "plus long": "longest",
    "plus large": "widest",
    "plus proche": "closest",
    "plus eloigne": "furthest",
}

# French object words -> English (accent-free keys; phrases first).
FR_OBJECTS: dict[str, str] = {
    "reservoirs de stockage": "storage tanks",
    "reservoir de stockage": "storage tank",
    "cuves de stockage": "storage tanks",
    "parcs de stationnement": "parking lots",
    "parc de stationnement": "parking lot",
    "aires de stationnement": "parking lots",
    "zones herbeuses": "grass areas",
    "zone herbeuse": "grass area",
    "sol nu": "bare soil",
    "sols nus": "bare soil areas",
    "terres agricoles": "fields",
    "panneaux solaires": "solar panels",
    "panneau solaire": "solar panel",
    "terrains de sport": "sports fields",
    "terrain de sport": "sports field",
    "plans d'eau": "water bodies",
    "plan d'eau": "water body",
    "plans d eau": "water bodies",
    "plan d eau": "water body",
    "cours d'eau": "rivers",
    "cours d eau": "rivers",
    "batiments": "buildings",
    "batiment": "building",
    "maisons": "houses",
    "maison": "house",
    "immeubles": "apartment blocks",
    "immeuble": "apartment block",
    "hangars": "sheds",
    "hangar": "shed",
    "entrepots": "warehouses",
    "entrepot": "warehouse",
    "routes": "roads",
    "route": "road",
    "rues": "streets",
    "rue": "street",
    "chemins": "tracks",
    "chateau d eau": "water tower",
    "chateaux d eau": "water towers",
    "chemin": "track",
    "autoroutes": "highways",
    "autoroute": "highway",
    "voitures": "cars",
    "voiture": "car",
    "vehicules": "vehicles",
    "vehicule": "vehicle",
    "camions": "trucks",
    "camion": "truck",
    "bus": "buses",
    "bateaux": "boats",
    "bateau": "boat",
    "navires": "ships",
    "navire": "ship",
    "avions": "airplanes",
    "avion": "airplane",
    "ponts": "bridges",
    "pont": "bridge",
    "arbres": "trees",
    "arbre": "tree",
    "forets": "forests",
    "foret": "forest",
    "bois": "woods",
    "herbe": "grass",
    "pelouses": "lawns",
    "pelouse": "lawn",
    "prairies": "grass areas",
    "prairie": "grass area",
    "champs": "fields",
    "champ": "field",
    "cultures": "crops",
    "eau": "water",
    "lacs": "lakes",
    "lac": "lake",
    "rivieres": "rivers",
    "riviere": "river",
    "fleuve": "river",
    "etangs": "ponds",
    "etang": "pond",
    "piscines": "pools",
    "piscine": "pool",
    "parkings": "parking lots",
    "parking": "parking lot",
    "reservoirs": "storage tanks",
    "reservoir": "storage tank",
    "cuves": "storage tanks",
    "cuve": "storage tank",
    "silos": "silos",
    "serres": "greenhouses",
    "serre": "greenhouse",
    "toits": "roofs",
    "toit": "roof",
    "toitures": "roofs",
    "stades": "stadiums",
    "stade": "stadium",
    "ports": "harbours",
    "port": "harbour",
    "aeroport": "airport",
    "pistes": "runways",
    "piste": "runway",
    "voies ferrees": "railways",
    "voie ferree": "railway",
    "chantiers": "construction sites",
    "chantier": "construction site",
    "sable": "sand",
    "sol": "soil",
    "vegetation": "vegetation",
    "nuages": "clouds",
    "nuage": "cloud",
    "ombres": "shadows",
    "eoliennes": "wind turbines",
    "eolienne": "wind turbine",
    "terrains": "grounds",
    "jardins": "gardens",
    "jardin": "garden",
    "zones inondees": "flooded areas",
    "zone inondee": "flooded area",
    "inondations": "flooded areas",
}
FR_ADJECTIVES = {
    "rouge": "red",
    "rouges": "red",
    "blanc": "white",
    "blancs": "white",
    "blanche": "white",
    "blanches": "white",
    "bleu": "blue",
    "bleus": "blue",
    "bleue": "blue",
    "bleues": "blue",
    "vert": "green",
    "verts": "green",
    "verte": "green",
    "vertes": "green",
    "noir": "black",
    "noirs": "black",
    "noire": "black",
    "noires": "black",
    "gris": "grey",
    "grand": "large",
    "grands": "large",
    "grande": "large",
    "grandes": "large",
    "petit": "small",
    "petits": "small",
    "petite": "small",
    "petites": "small",
    "gros": "big",
    "grosse": "big",
    "grosses": "big",
    "agricoles": "farm",
    "agricole": "farm",
    "industriels": "industrial",
    "industriel": "industrial",
    "industrielle": "industrial",
    "industrielles": "industrial",
    "residentiels": "residential",
    "residentielles": "residential",
    "nouveaux": "new",
    "nouvelles": "new",
    "nouveau": "new",
    "nouvelle": "new",
    "ronds": "round",
    "dense": "dense",
    "denses": "dense",
    "rondes": "round",
    "rond": "round",
}
FR_PREPOSITIONS = {
    "dans": "in the",
    "sur": "on the",
    "pres": "near the",
    "autour": "around the",
    "le long": "along the",
}
_FR_FUNCTION = {"de", "des", "du", "d", "la", "le", "les", "l", "a", "au", "aux"}

# English synonyms -> a class name of the built-in model's vocabulary (used only when the model's
# class list does not have the word itself).
SYNONYMS: dict[str, str] = {
    "car": "vehicles",
    "cars": "vehicles",
    "truck": "vehicles",
    "trucks": "vehicles",
    "bus": "vehicles",
    "buses": "vehicles",
    "van": "vehicles",
    "vans": "vehicles",
    "lorries": "vehicles",
    "automobiles": "vehicles",
    "vehicle": "vehicles",
    "house": "buildings",
    "houses": "buildings",
    "homes": "buildings",
    "sheds": "buildings",
    "warehouses": "buildings",
    "barns": "buildings",
    "apartment blocks": "buildings",
    "roofs": "buildings",
    "structures": "buildings",
    "water": "water bodies",
    "lakes": "water bodies",
    "ponds": "water bodies",
    "pools": "water bodies",
    "rivers": "water bodies",
    "reservoirs": "water bodies",
    "swimming pools": "water bodies",
    "sea": "water bodies",
    "river": "water bodies",
    "streets": "roads",
    "street": "roads",
    "highways": "roads",
    "highway": "roads",
    "tracks": "roads",
    "paths": "roads",
    "lanes": "roads",
    "motorways": "roads",
    "parking": "parking lots",
    "car parks": "parking lots",
    "parking areas": "parking lots",
    "tanks": "storage tanks",
    "silos": "storage tanks",
    "oil tanks": "storage tanks",
    "woods": "forests",
    "woodland": "forests",
    "forest": "forests",
    "bush": "trees",
    "vegetation": "trees",
    "grass": "grass areas",
    "lawns": "grass areas",
    "lawn": "grass areas",
    "meadows": "grass areas",
    "grassland": "grass areas",
    "crops": "fields",
    "farmland": "fields",
    "farms": "fields",
    "field": "fields",
    "soil": "bare soil areas",
    "bare soil": "bare soil areas",
    "sand": "bare soil areas",
    "bare ground": "bare soil areas",
    "dirt": "bare soil areas",
}

_WORD = re.compile(r"[\w'’-]+|\?", re.UNICODE)


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def normalise(text: str) -> str:
    """Lower case, no accents, straight apostrophes, one space between words."""
    text = strip_accents(text.lower()).replace("’", "'").replace("`", "'")
    return re.sub(r"\s+", " ", text).strip()


_FRENCH_MARKERS = set(
    """le la les des du un une est sont dans cette cet ces ou combien quel quelle quels quelles trouve montre
y a-t-il il elle sur avec pour moi et qu que qui quoi l d decris segmente delimite compte ont depuis entre avant apres
image zone couche tuiles voit vois de nombre moi tous toutes peux pourquoi segmente trouve localise repere
montre cherche""".split()
)
_ENGLISH_MARKERS = set(
    """the is are in this that these those of how what where which find show count many there any
outline describe changed compare with for me you can do does on""".split()
)


def language(text: str) -> str:
    """ "fr" or "en", by counting common words of each."""
    words = re.findall(r"[a-z'-]+", normalise(text))
    split = [w for word in words for w in re.split(r"['-]", word) if w]
    fr = sum(w in _FRENCH_MARKERS for w in split)
    en = sum(w in _ENGLISH_MARKERS for w in split)
    return "fr" if fr > en else "en"


# --- class lists -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassList:
    """The fixed classes of a model: ``names`` (what to tell the person) and every ``nouns`` it knows."""

    model: str
    names: tuple[str, ...]
    nouns: frozenset[str]

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError(f"model '{self.model}': a class list needs at least one class name")
        object.__setattr__(self, "nouns", frozenset(n.lower() for n in self.nouns) | {n.lower() for n in self.names})

    def resolve(self, phrase: str) -> str | None:
        """The name the model knows ``phrase`` by: itself, its singular/plural, a synonym's class; None if unknown."""
        phrase = phrase.lower().strip()
        if phrase in self.nouns:
            return phrase
        words = phrase.split()
        candidates = [phrase, " ".join(words[-2:]), words[-1]] if words else [phrase]
        for candidate in candidates:
            for form in (candidate, singular(candidate), _plural(candidate)):
                if form in self.nouns:
                    return phrase if form == phrase or candidate != phrase else form
                if form in SYNONYMS and SYNONYMS[form] in self.nouns:
                    return SYNONYMS[form] if candidate == phrase else phrase
        return None


@lru_cache(maxsize=32)
def _read_class_list(config_file: str, model: str) -> ClassList | None:
    try:
        config = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("model '%s': cannot read its class list from %s: %s", model, config_file, exc)
        return None
    names = [str(n) for n in (config.get("class_names") or []) if str(n) != "ground"]  # 0 is the background
    if not names:
        return None
    return ClassList(model, tuple(names), frozenset(str(n) for n in (config.get("class_nouns") or {})))


def classes_for(registry: Any, model: str) -> ClassList | None:
    """The class list of the model that answers ``ground`` when ``model`` is asked (``auto``: the models
    file's [tasks] choice), from its config.json; None for an open-vocabulary model. ``registry`` is
    the engine's Registry (``route`` and ``spec``); an unknown model raises its UNKNOWN_MODEL error."""
    name = registry.route(Task.GROUND, model)
    spec = registry.spec(name)
    if spec.backend != "rsa" or not spec.config.get("path"):
        return None
    return _read_class_list(str(Path(str(spec.config["path"])) / "config.json"), name)


# --- the router --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    """Every intent's score for one text (for the benchmark's and a reader's curiosity)."""

    values: dict[Intent, float]

    def ranked(self) -> list[tuple[Intent, float]]:
        order = list(Intent)
        return sorted(self.values.items(), key=lambda kv: (-kv[1], order.index(kv[0])))


def score(text: str, images: int = 1) -> Scores:
    norm = normalise(text)
    values = {intent: 0.0 for intent in Intent}
    for intent, patterns in _COMPILED.items():
        for pattern, weight in patterns:
            if pattern.search(norm):
                values[intent] += weight
    if images == 2 and values[Intent.CHANGE] > 0:
        values[Intent.CHANGE] += 1.5  # a before and an after are chosen: a change question is likely meant
    if images == 2 and re.search(r"\bwhat('s| is) new\b|\bquoi de neuf\b", norm):
        values[Intent.CHANGE] += 4.0  # "what's new?" compares only when there is a before
    elif (
        images == 2
        and values[Intent.CHANGE] == 0
        and re.search(r"\b(new|nouveaux?|nouvelles?|built|construit|gone|still)\b", norm)
    ):
        values[Intent.CHANGE] += 2.0
    if images == 1 and values[Intent.CHANGE] > 0 and re.search(r"\bchange (of|de)\b", norm):
        values[Intent.CHANGE] -= 1.0
    # "how many" wins over the find/where words that often come with it ("find the number of cars")
    if values[Intent.COUNT] >= 3.0:
        values[Intent.GROUND] = min(values[Intent.GROUND], values[Intent.COUNT] - 1.0)
    # "search for X in this image" is a find; the layer-wide words make it a search
    if values[Intent.RETRIEVE] and not re.search(
        r"\b(tiles?|tuiles?|whole|entire|full|across|anywhere|layer|couche|mosaic|mosaique|entiere|toute|partout|rank|classe|n'?importe)\b",
        norm,
    ):
        values[Intent.RETRIEVE] = min(values[Intent.RETRIEVE], 1.5)
    return Scores(values)


def route(request: RouteRequest, classes: ClassList | None = None) -> RouteResult:
    """The intent and prompt of ``request`` (see the module's docstring)."""
    text = request.prompt.strip()
    if text.startswith("/"):
        return _slash(text)
    previous = _previous(request.history, request.images)
    result = _route_text(text, request.images, previous)
    if classes is not None and result.intent in OBJECT_INTENTS - {Intent.RETRIEVE} and result.prompt:
        result = _check_class(result, classes)
    log.debug(
        "routed %r -> %s %r (%.2f) %s", text, result.intent.value, result.prompt, result.confidence, result.assumed
    )
    return result


def _slash(text: str) -> RouteResult:
    name, _, argument = text[1:].partition(" ")
    intent = SLASH.get(name.lower())
    if intent is None:
        return RouteResult(Intent.CHAT, text, f"'/{name}' is not a command; asked it as a question", 0.3)
    return RouteResult(intent, argument.strip(), "", 1.0)


@dataclass(frozen=True)
class _Previous:
    intent: Intent
    object: str


def _previous(history: tuple[Message, ...], images: int) -> _Previous | None:
    """The last user request of ``history`` that had an object (find, outline, count), if it is the last one."""
    users = [m.content for m in history if m.role is Role.USER and m.content.strip()]
    if not users:
        return None
    last = users[-1].strip()
    result = _slash(last) if last.startswith("/") else _route_text(last, images, None)
    if result.intent in (Intent.GROUND, Intent.SEGMENT, Intent.COUNT) and result.prompt:
        return _Previous(result.intent, result.prompt)
    return None


def _route_text(text: str, images: int, previous: _Previous | None) -> RouteResult:
    norm = normalise(text)
    lang = language(text)
    ranked = score(text, images).ranked()
    (best, top), (second, runner_up) = ranked[0], ranked[1]
    obj, superlative = _object(text, lang)

    if previous is not None:
        follow = _follow_up(norm, obj, superlative, best, top, previous)
        if follow is not None:
            return follow

    if top <= 0:
        if obj and superlative is None and len(obj.split()) <= 4 and "?" not in text and _looks_like_object(obj):
            return RouteResult(
                Intent.GROUND,
                obj,
                f"Assumed you want the {obj} found; say 'outline' for their shapes or 'how many' to count them",
                0.5,
            )
        return RouteResult(Intent.CHAT, text, "", 0.5)

    confidence = min(1.0, 0.5 + 0.5 * (top - max(runner_up, 0.0)) / max(top, 1e-6))
    intent = best
    if intent in OBJECT_INTENTS:
        if superlative is not None and obj and intent in (Intent.GROUND, Intent.SEGMENT):
            obj = _with_superlative(obj, superlative.group(0))
        if not obj:
            verb = {Intent.COUNT: "count", Intent.GROUND: "find", Intent.SEGMENT: "outline"}.get(intent, "search for")
            return RouteResult(Intent.CHAT, text, f"Nothing named to {verb}; asked it as a question", 0.4)
        prompt = obj
    elif intent is Intent.CHANGE or intent is Intent.CHAT:
        prompt = text
    else:
        prompt = ""
    assumed = ""
    if (
        runner_up > 0
        and top - runner_up < CLOSE_CALL
        and best is not Intent.CHAT
        and {best, second} != {Intent.CHAT, Intent.CAPTION}
        and not (second is Intent.CHAT and runner_up <= 2.0)
    ):  # "can you ...?" is politeness, not a question
        assumed = f"Took this as {WHAT[best]} rather than {WHAT[second]}; type {SLASH_OF[second]} to force that"
    return RouteResult(intent, prompt, assumed, confidence)


def _follow_up(
    norm: str, obj: str, superlative: re.Match | None, best: Intent, top: float, previous: _Previous
) -> RouteResult | None:
    """A turn that leans on the last request: "how many?", "outline them", "and the largest one?", "and the roads?"."""
    pronoun_only = not obj or set(re.split(r"[\s'-]+", normalise(obj))) <= _PRONOUN_ONLY
    last = previous.object
    if best in OBJECT_INTENTS and top > 0 and pronoun_only and superlative is None:
        return RouteResult(best, last, "", 0.8)  # "how many?", "outline them", "délimite-les"
    if superlative is not None and pronoun_only:
        intent = Intent.GROUND if previous.intent is Intent.COUNT else previous.intent
        if best in (Intent.GROUND, Intent.SEGMENT) and top >= 2:
            intent = best
        core = re.sub(r"^the \w+ ", "", last) if _SUPERLATIVE.search(last) else last
        wanted = _with_superlative(core, superlative.group(0))
        return RouteResult(intent, wanted, f"Took this to mean {wanted}, from your last request", 0.7)
    if (
        _FOLLOW_UP.match(norm)
        and obj
        and not pronoun_only
        and (top <= 0 or best is Intent.CHAT and top < 2)
        and _looks_like_object(obj)
    ):
        return RouteResult(
            previous.intent, obj, f"Did the same as your last request ({WHAT[previous.intent]}) for the {obj}", 0.7
        )
    return None


def _superlative_word(found: str) -> str:
    """ "largest" for "largest"; the English of "plus grande", "plus gros", ..."""
    found = normalise(found)
    if not found.startswith("plus "):
        return found
    adjective = found.split()[1]
    for form in (adjective, re.sub(r"es$", "", adjective), re.sub(r"e$", "", adjective), re.sub(r"s$", "", adjective)):
        if f"plus {form}" in _SUPERLATIVE_EN:
            return _SUPERLATIVE_EN[f"plus {form}"]
    return "largest"


def _with_superlative(obj: str, superlative: str) -> str:
    """ "the largest building" from "buildings" and "largest" (or "plus grand")."""
    rest = re.sub(r"^(the|one|ones)\s+", "", obj.strip()).strip() or obj
    return f"the {_superlative_word(superlative)} {singular(rest)}"


def _object(text: str, lang: str) -> tuple[str, re.Match | None]:
    """The request's object in English and its superlative, if any ("le plus grand bâtiment" -> "building", "plus
    grand")."""
    superlative = _SUPERLATIVE.search(normalise(text))
    if superlative is not None:
        text = re.sub(
            r"\b(largest|biggest|smallest|longest|tallest|widest|nearest|closest|furthest|farthest|plus \w+)\b",
            " ",
            text.lower(),
        )
    phrase = object_phrase(text)
    if phrase and (lang == "fr" or phrase != strip_accents(phrase)):
        phrase = to_english(phrase)
    return phrase, superlative


def _looks_like_object(phrase: str) -> bool:
    """Whether a phrase with no request words around it names things on a map ("storage tanks", "les routes")."""
    words = set(normalise(phrase).replace("'", " ").split())
    return bool(words & _OBJECT_WORDS)


_OBJECT_WORDS = {
    w for name in (*FR_OBJECTS, *FR_OBJECTS.values(), *SYNONYMS, *SYNONYMS.values()) for w in name.split() if len(w) > 3
} | {
    "cars",
    "ships",
    "boats",
    "planes",
    "airplanes",
    "aircraft",
    "bridges",
    "solar",
    "panels",
    "turbines",
    "greenhouses",
    "stadiums",
    "runways",
    "railways",
    "courts",
    "pools",
}


def object_phrase(text: str) -> str:
    """The object a request names: the words left once filler is taken off both ends and a clause
    after it is cut ("how many airplanes are parked here?" -> "airplanes"); "" if none."""
    parts: list[str] = []
    for token in _WORD.findall(text.lower().replace("’", "'").replace('"', " ")):
        # "l'eau" -> "l", "eau"; "montre-moi" -> "montre", "moi"; "y a-t-il" -> "y", "a", "t", "il"
        parts.extend(p for p in re.split(r"['-]", token) if p)
    plain = [strip_accents(p) for p in parts]
    protected = [False] * len(parts)
    for size in (3, 2):
        for i in range(len(plain) - size + 1):
            if " ".join(plain[i : i + size]) in _COMPOUNDS:
                protected[i : i + size] = [True] * size
    start = 0
    while (
        start < len(parts)
        and not protected[start]
        and (plain[start] in _FILLER or plain[start] in _CLAUSE or plain[start].isdigit())
    ):
        start += 1
    end = start
    while end < len(parts) and (protected[end] or end == start or plain[end] not in _CLAUSE | _PARTICIPLES):
        end += 1
    while end > start and not protected[end - 1] and (plain[end - 1] in _FILLER or plain[end - 1].isdigit()):
        end -= 1
    return " ".join(parts[start:end]).strip()


def to_english(phrase: str) -> str:
    """A French object phrase in English ("les grands bâtiments" -> "large buildings"); English unchanged."""
    norm = normalise(phrase).replace("'", " ")
    tokens = norm.split()
    if not any(k in norm for k in FR_OBJECTS) and not any(t in FR_ADJECTIVES for t in tokens):
        return phrase.strip()
    nouns: list[str] = []
    adjectives: list[str] = []
    other: list[str] = []
    i = 0
    originals = re.sub(r"['’]", " ", phrase.lower()).split()
    while i < len(tokens):
        for size in (3, 2, 1):
            chunk = " ".join(tokens[i : i + size])
            if len(tokens[i : i + size]) == size and chunk in FR_OBJECTS:
                nouns.append(FR_OBJECTS[chunk])
                i += size
                break
        else:
            token = tokens[i]
            if token in FR_ADJECTIVES:
                adjectives.append(FR_ADJECTIVES[token])
            elif token in FR_PREPOSITIONS:
                other.append(FR_PREPOSITIONS[token])
            elif token not in _FR_FUNCTION:
                other.append(originals[i] if i < len(originals) else token)
            i += 1
    if not nouns:
        return phrase.strip()
    return " ".join(adjectives + [nouns[0]] + other + nouns[1:]).strip()


def singular(word: str) -> str:
    """ "water bodies" -> "water body", "cars" -> "car" (short words such as "bus" are left as they are)."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def _plural(word: str) -> str:
    if word.endswith("y") and not word.endswith(("ay", "ey", "oy")):
        return word[:-1] + "ies"
    if word.endswith(("s", "sh", "ch", "x")):
        return word + "es"
    return word + "s"


def _check_class(result: RouteResult, classes: ClassList) -> RouteResult:
    obj = result.prompt
    core = _SUPERLATIVE.sub(" ", obj).replace("the ", " ").strip()
    known = classes.resolve(core)
    if known is None:
        names = ", ".join(classes.names)
        return RouteResult(
            result.intent,
            obj,
            f"The model '{classes.model}' does not know '{core}'; it knows: {names}",
            min(result.confidence, 0.3),
            classes.names,
        )
    if known != core and obj == core:
        return RouteResult(result.intent, known, result.assumed, result.confidence)
    return result


def route_text(
    prompt: str, history: list[tuple[str, str]] | None = None, images: int = 1, classes: ClassList | None = None
) -> RouteResult:
    """Convenience for the benchmark and tests: ``history`` as (role, content) pairs."""
    messages = tuple(Message(Role(role), content) for role, content in (history or []))
    return route(RouteRequest(prompt, messages, images), classes)
