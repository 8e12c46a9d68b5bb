<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE TS>
<TS version="2.1" language="fr_FR">
    <context>
        <name>MaskExport</name>
        <message>
            <source>No polygon overlaps the grid: the mask is empty.</source>
            <translation>Aucun polygone ne recouvre la grille : le masque est vide.</translation>
        </message>
        <message>
            <source>Canceled: nothing was written.</source>
            <translation>Annulé : rien n’a été écrit.</translation>
        </message>
        <message>
            <source>The grid has no valid CRS.</source>
            <translation>La grille n’a pas de SCR valide.</translation>
        </message>
        <message>
            <source>A geotransform has six numbers.</source>
            <translation>Une géotransformation comporte six nombres.</translation>
        </message>
        <message>
            <source>The grid has no pixels.</source>
            <translation>La grille n’a aucun pixel.</translation>
        </message>
        <message>
            <source>The reference raster has no CRS.</source>
            <translation>Le raster de référence n’a pas de SCR.</translation>
        </message>
        <message>
            <source>The resolution must be greater than zero.</source>
            <translation>La résolution doit être supérieure à zéro.</translation>
        </message>
        <message>
            <source>The extent has no area.</source>
            <translation>L’emprise n’a pas de surface.</translation>
        </message>
        <message>
            <source>Values from {0} to {1} do not fit a 32-bit integer raster.</source>
            <translation>Les valeurs de {0} à {1} ne tiennent pas dans un raster d’entiers 32 bits.</translation>
        </message>
        <message>
            <source>The value field needs a name.</source>
            <translation>Le champ de valeur doit avoir un nom.</translation>
        </message>
        <message>
            <source>“{0}” has no selected features.</source>
            <translation>« {0} » n’a aucune entité sélectionnée.</translation>
        </message>
        <message>
            <source>“{0}” has no features to burn.</source>
            <translation>« {0} » n’a aucune entité à rastériser.</translation>
        </message>
        <message>
            <source>The nodata value {0} is also a burn value.</source>
            <translation>La valeur nodata {0} est aussi une valeur à rastériser.</translation>
        </message>
        <message>
            <source>“{0}” is not a polygon layer.</source>
            <translation>« {0} » n’est pas une couche de polygones.</translation>
        </message>
        <message>
            <source>“{0}” has no field “{1}”.</source>
            <translation>« {0} » n’a pas de champ « {1} ».</translation>
        </message>
        <message>
            <source>The field “{0}” does not hold integers (class ids).</source>
            <translation>Le champ « {0} » ne contient pas d’entiers (identifiants de classe).</translation>
        </message>
        <message>
            <source>{0} features skipped: no geometry, no class id, or not transformable.</source>
            <translation>{0} entités ignorées : sans géométrie, sans identifiant de classe ou impossibles à reprojeter.</translation>
        </message>
        <message>
            <source>The mask must hold integers; band 1 holds {0} values.</source>
            <translation>Le masque doit contenir des entiers ; la bande 1 contient des valeurs {0}.</translation>
        </message>
        <message>
            <source>No vector format writes “{0}” files.</source>
            <translation>Aucun format vecteur n’écrit de fichiers « {0} ».</translation>
        </message>
        <message>
            <source>The folder {0} does not exist.</source>
            <translation>Le dossier {0} n’existe pas.</translation>
        </message>
        <message>
            <source>{0} already exists: choose another name or allow replacing it.</source>
            <translation>{0} existe déjà : choisissez un autre nom ou autorisez son remplacement.</translation>
        </message>
        <message>
            <source>{0} is not a raster.</source>
            <translation>{0} n’est pas un raster.</translation>
        </message>
        <message>
            <source>The grid would be {0} x {1} pixels: choose a coarser resolution.</source>
            <translation>La grille ferait {0} x {1} pixels : choisissez une résolution plus grossière.</translation>
        </message>
        <message>
            <source>Could not create {0}: {1}</source>
            <translation>Impossible de créer {0} : {1}</translation>
        </message>
        <message>
            <source>Burning the polygons failed: {0}</source>
            <translation>La rastérisation des polygones a échoué : {0}</translation>
        </message>
        <message>
            <source>Writing {0} failed: {1}</source>
            <translation>L’écriture de {0} a échoué : {1}</translation>
        </message>
        <message>
            <source>Polygonising the mask failed: {0}</source>
            <translation>La polygonisation du masque a échoué : {0}</translation>
        </message>
        <message>
            <source>“{0}” is not a raster file GDAL can read.</source>
            <translation>« {0} » n’est pas un fichier raster lisible par GDAL.</translation>
        </message>
    </context>
    <context>
        <name>RSAssistantProvider</name>
        <message>
            <source>RS Assistant</source>
            <translation>RS Assistant</translation>
        </message>
        <message>
            <source>RS Assistant: remote-sensing imagery tools</source>
            <translation>RS Assistant : outils pour l’imagerie de télédétection</translation>
        </message>
    </context>
    <context>
        <name>LayerToMaskAlgorithm</name>
        <message>
            <source>Layer to mask</source>
            <translation>Couche vers masque</translation>
        </message>
        <message>
            <source>Masks</source>
            <translation>Masques</translation>
        </message>
        <message>
            <source>Burns polygons (or the selected ones) into a one-band GeoTIFF mask. The grid is a reference raster's (same CRS, geotransform and size) or an extent, a resolution and a CRS. Each polygon burns 1, or the class id of an integer field; other pixels get the nodata value if one is set, else 0. The data type is the smallest that holds the values (Byte when they fit).</source>
            <translation>Rastérise des polygones (ou ceux qui sont sélectionnés) dans un masque GeoTIFF à une bande. La grille est celle d’un raster de référence (même SCR, géotransformation et taille) ou une emprise, une résolution et un SCR. Chaque polygone inscrit 1, ou l’identifiant de classe d’un champ entier ; les autres pixels reçoivent la valeur nodata si elle est définie, sinon 0. Le type de données est le plus petit qui contient les valeurs (Byte quand elles y tiennent).</translation>
        </message>
        <message>
            <source>Polygon layer</source>
            <translation>Couche de polygones</translation>
        </message>
        <message>
            <source>Class id field (empty: burn 1)</source>
            <translation>Champ d’identifiant de classe (vide : inscrire 1)</translation>
        </message>
        <message>
            <source>Reference raster (its grid is used)</source>
            <translation>Raster de référence (sa grille est utilisée)</translation>
        </message>
        <message>
            <source>Extent (without a reference raster)</source>
            <translation>Emprise (sans raster de référence)</translation>
        </message>
        <message>
            <source>Resolution in CRS units (without a reference raster)</source>
            <translation>Résolution en unités du SCR (sans raster de référence)</translation>
        </message>
        <message>
            <source>CRS (without a reference raster; default: the extent's)</source>
            <translation>SCR (sans raster de référence ; par défaut : celui de l’emprise)</translation>
        </message>
        <message>
            <source>Nodata value</source>
            <translation>Valeur nodata</translation>
        </message>
        <message>
            <source>Compression</source>
            <translation>Compression</translation>
        </message>
        <message>
            <source>Burn every pixel a polygon touches</source>
            <translation>Inscrire chaque pixel touché par un polygone</translation>
        </message>
        <message>
            <source>Mask</source>
            <translation>Masque</translation>
        </message>
        <message>
            <source>The layer has no selected features.</source>
            <translation>La couche n’a aucune entité sélectionnée.</translation>
        </message>
        <message>
            <source>Give a reference raster, or an extent and a resolution.</source>
            <translation>Indiquez un raster de référence, ou une emprise et une résolution.</translation>
        </message>
        <message>
            <source>Give a CRS for the extent.</source>
            <translation>Indiquez un SCR pour l’emprise.</translation>
        </message>
        <message>
            <source>Give either a reference raster or an extent, not both.</source>
            <translation>Indiquez soit un raster de référence, soit une emprise, pas les deux.</translation>
        </message>
        <message>
            <source>The reference is not a raster layer.</source>
            <translation>La référence n’est pas une couche raster.</translation>
        </message>
    </context>
    <context>
        <name>MaskToPolygonsAlgorithm</name>
        <message>
            <source>Mask to polygons</source>
            <translation>Masque vers polygones</translation>
        </message>
        <message>
            <source>Masks</source>
            <translation>Masques</translation>
        </message>
        <message>
            <source>Turns band 1 of an integer mask raster into polygons, one per connected group of pixels of equal value, with the value as an attribute. Nodata and zero pixels can be left out as background.</source>
            <translation>Transforme la bande 1 d’un raster masque d’entiers en polygones, un par groupe connexe de pixels de même valeur, avec la valeur comme attribut. Les pixels nodata et à zéro peuvent être exclus comme fond.</translation>
        </message>
        <message>
            <source>Mask raster</source>
            <translation>Raster masque</translation>
        </message>
        <message>
            <source>Value field name</source>
            <translation>Nom du champ de valeur</translation>
        </message>
        <message>
            <source>Nodata pixels are background</source>
            <translation>Les pixels nodata sont du fond</translation>
        </message>
        <message>
            <source>Zero pixels are background</source>
            <translation>Les pixels à zéro sont du fond</translation>
        </message>
        <message>
            <source>Join diagonal neighbours (8-connectivity)</source>
            <translation>Relier les voisins en diagonale (8-connexité)</translation>
        </message>
        <message>
            <source>Polygons</source>
            <translation>Polygones</translation>
        </message>
        <message>
            <source>Canceled: nothing was written.</source>
            <translation>Annulé : rien n’a été écrit.</translation>
        </message>
    </context>
    <context>
        <name>MaskExportDialog</name>
        <message>
            <source>Export masks…</source>
            <translation>Exporter des masques…</translation>
        </message>
        <message>
            <source>GeoTIFF (*.tif *.tiff)</source>
            <translation>GeoTIFF (*.tif *.tiff)</translation>
        </message>
        <message>
            <source>Choose where to write the mask.</source>
            <translation>Choisissez où écrire le masque.</translation>
        </message>
        <message>
            <source>Choose where to write the polygons.</source>
            <translation>Choisissez où écrire les polygones.</translation>
        </message>
        <message>
            <source>Replace file?</source>
            <translation>Remplacer le fichier ?</translation>
        </message>
        <message>
            <source>Choose a polygon layer.</source>
            <translation>Choisissez une couche de polygones.</translation>
        </message>
        <message>
            <source>Choose a mask raster.</source>
            <translation>Choisissez un raster masque.</translation>
        </message>
        <message>
            <source>Choose a reference raster.</source>
            <translation>Choisissez un raster de référence.</translation>
        </message>
        <message>
            <source>Exporting to {0}…</source>
            <translation>Export vers {0}…</translation>
        </message>
        <message>
            <source>Canceled: nothing was written.</source>
            <translation>Annulé : rien n’a été écrit.</translation>
        </message>
        <message>
            <source>{0} already exists. Replace it?</source>
            <translation>{0} existe déjà. Le remplacer ?</translation>
        </message>
        <message>
            <source>The folder {0} does not exist.</source>
            <translation>Le dossier {0} n’existe pas.</translation>
        </message>
        <message>
            <source>Not exported: {0} already exists.</source>
            <translation>Non exporté : {0} existe déjà.</translation>
        </message>
        <message>
            <source>Written: {0}</source>
            <translation>Écrit : {0}</translation>
        </message>
        <message>
            <source>The export failed: see the RS Assistant log.</source>
            <translation>L’export a échoué : voir le journal RS Assistant.</translation>
        </message>
        <message>
            <source>Export masks</source>
            <translation>Exporter des masques</translation>
        </message>
        <message>
            <source>Layer to mask</source>
            <translation>Couche vers masque</translation>
        </message>
        <message>
            <source>Polygon layer</source>
            <translation>Couche de polygones</translation>
        </message>
        <message>
            <source>Selected features only</source>
            <translation>Entités sélectionnées uniquement</translation>
        </message>
        <message>
            <source>Class ids from</source>
            <translation>Identifiants de classe depuis</translation>
        </message>
        <message>
            <source>Burn each polygon's value of an integer field instead of 1</source>
            <translation>Inscrire la valeur d’un champ entier de chaque polygone au lieu de 1</translation>
        </message>
        <message>
            <source>Grid</source>
            <translation>Grille</translation>
        </message>
        <message>
            <source>Reference raster</source>
            <translation>Raster de référence</translation>
        </message>
        <message>
            <source>The mask gets this raster's CRS, geotransform and size</source>
            <translation>Le masque prend le SCR, la géotransformation et la taille de ce raster</translation>
        </message>
        <message>
            <source>Extent</source>
            <translation>Emprise</translation>
        </message>
        <message>
            <source>Resolution</source>
            <translation>Résolution</translation>
        </message>
        <message>
            <source>Pixel size in units of the CRS</source>
            <translation>Taille de pixel en unités du SCR</translation>
        </message>
        <message>
            <source>CRS</source>
            <translation>SCR</translation>
        </message>
        <message>
            <source>Nodata value</source>
            <translation>Valeur nodata</translation>
        </message>
        <message>
            <source>Compression</source>
            <translation>Compression</translation>
        </message>
        <message>
            <source>Burn every pixel a polygon touches</source>
            <translation>Inscrire chaque pixel touché par un polygone</translation>
        </message>
        <message>
            <source>Mask file</source>
            <translation>Fichier masque</translation>
        </message>
        <message>
            <source>Mask to polygons</source>
            <translation>Masque vers polygones</translation>
        </message>
        <message>
            <source>Mask raster</source>
            <translation>Raster masque</translation>
        </message>
        <message>
            <source>Value field</source>
            <translation>Champ de valeur</translation>
        </message>
        <message>
            <source>Nodata pixels are background</source>
            <translation>Les pixels nodata sont du fond</translation>
        </message>
        <message>
            <source>Zero pixels are background</source>
            <translation>Les pixels à zéro sont du fond</translation>
        </message>
        <message>
            <source>Join diagonal neighbours (8-connectivity)</source>
            <translation>Relier les voisins en diagonale (8-connexité)</translation>
        </message>
        <message>
            <source>Polygon file</source>
            <translation>Fichier de polygones</translation>
        </message>
        <message>
            <source>Add the result to the project</source>
            <translation>Ajouter le résultat au projet</translation>
        </message>
        <message>
            <source>{0} was written and added to the project.</source>
            <translation>{0} a été écrit et ajouté au projet.</translation>
        </message>
        <message>
            <source>{0} was written.</source>
            <translation>{0} a été écrit.</translation>
        </message>
        <message>
            <source>Export done</source>
            <translation>Export terminé</translation>
        </message>
        <message>
            <source>Give the mask the grid of a raster: same CRS, pixels and size</source>
            <translation>Donner au masque la grille d’un raster : même SCR, mêmes pixels, même taille</translation>
        </message>
        <message>
            <source>Extent, pixel size and CRS</source>
            <translation>Emprise, taille de pixel et SCR</translation>
        </message>
        <message>
            <source>Make the mask's grid from an area, a pixel size and a CRS</source>
            <translation>Construire la grille du masque à partir d’une zone, d’une taille de pixel et d’un SCR</translation>
        </message>
        <message>
            <source>The area the mask covers; the buttons take it from a layer, the map view or a drawn box</source>
            <translation>La zone couverte par le masque ; les boutons la prennent d’une couche, de la vue de la carte ou d’un rectangle dessiné</translation>
        </message>
        <message>
            <source>Pixel size</source>
            <translation>Taille de pixel</translation>
        </message>
        <message>
            <source>The side of a mask pixel on the ground, in the units of the mask's CRS</source>
            <translation>Le côté d’un pixel du masque au sol, dans les unités du SCR du masque</translation>
        </message>
        <message>
            <source>The mask's CRS (the extent is read in it)</source>
            <translation>Le SCR du masque (l’emprise y est lue)</translation>
        </message>
    </context>
    <context>
        <name>AssistantController</name>
        <message>
            <source>RS Assistant: {question}</source>
            <translation>RS Assistant : {question}</translation>
        </message>
        <message>
            <source>Type /find {what} to try anyway.</source>
            <translation>Tapez /find {what} pour essayer quand même.</translation>
        </message>
        <message>
            <source>Looked for {what}: {count} found</source>
            <translation>Recherché {what} : {count} trouvé(s)</translation>
        </message>
        <message>
            <source>Counted {count} {what}</source>
            <translation>{count} {what} compté(s)</translation>
        </message>
        <message>
            <source>Found {count} {what}</source>
            <translation>{count} {what} trouvé(s)</translation>
        </message>
        <message>
            <source>Found no {what}</source>
            <translation>Aucun {what} trouvé</translation>
        </message>
        <message>
            <source>Outlined {what}: {count} polygon(s)</source>
            <translation>{what} délimité(s) : {count} polygone(s)</translation>
        </message>
        <message>
            <source>Found no {what} to outline</source>
            <translation>Aucun {what} à délimiter</translation>
        </message>
        <message>
            <source>Described the region</source>
            <translation>Région décrite</translation>
        </message>
        <message>
            <source>Compared {before} with {after}</source>
            <translation>{before} comparée à {after}</translation>
        </message>
        <message>
            <source>Searched the layer for {what}</source>
            <translation>Couche parcourue à la recherche de {what}</translation>
        </message>
    </context>
    <context>
        <name>ChatDock</name>
        <message>
            <source>Drawn region (cannot be shown in the project&apos;s CRS)</source>
            <translation>Région dessinée (impossible à afficher dans le SCR du projet)</translation>
        </message>
        <message>
            <source>Stop</source>
            <translation>Arrêter</translation>
        </message>
        <message>
            <source>Send</source>
            <translation>Envoyer</translation>
        </message>
        <message>
            <source>Cancel the running request</source>
            <translation>Annuler la requête en cours</translation>
        </message>
        <message>
            <source>Send (Enter)</source>
            <translation>Envoyer (Entrée)</translation>
        </message>
        <message>
            <source>Current view</source>
            <translation>Vue actuelle</translation>
        </message>
        <message>
            <source>{w} × {h} {units}</source>
            <translation>{w} × {h} {units}</translation>
        </message>
        <message>
            <source>{w} × {h} px</source>
            <translation>{w} × {h} px</translation>
        </message>
        <message>
            <source>less than 1%</source>
            <translation>moins de 1 %</translation>
        </message>
        <message>
            <source>{size} · the image covers {share} of it: zoom to the layer</source>
            <translation>{size} · l’image n’en couvre que {share} : zoomez sur la couche</translation>
        </message>
        <message>
            <source>Current view: {size}</source>
            <translation>Vue actuelle : {size}</translation>
        </message>
        <message>
            <source>RS Assistant</source>
            <translation>RS Assistant</translation>
        </message>
        <message>
            <source>Engine: stopped</source>
            <translation>Moteur : arrêté</translation>
        </message>
        <message>
            <source>Model that answers</source>
            <translation>Modèle qui répond</translation>
        </message>
        <message>
            <source>New chat</source>
            <translation>Nouvelle discussion</translation>
        </message>
        <message>
            <source>Settings</source>
            <translation>Paramètres</translation>
        </message>
        <message>
            <source>Imagery</source>
            <translation>Imagerie</translation>
        </message>
        <message>
            <source>Image</source>
            <translation>Image</translation>
        </message>
        <message>
            <source>Before</source>
            <translation>Avant</translation>
        </message>
        <message>
            <source>After</source>
            <translation>Après</translation>
        </message>
        <message>
            <source>Swap before and after</source>
            <translation>Échanger avant et après</translation>
        </message>
        <message>
            <source>Region</source>
            <translation>Région</translation>
        </message>
        <message>
            <source>Draw a region on the map</source>
            <translation>Dessiner une région sur la carte</translation>
        </message>
        <message>
            <source>Use current view</source>
            <translation>Utiliser la vue actuelle</translation>
        </message>
        <message>
            <source>Describe</source>
            <translation>Décrire</translation>
        </message>
        <message>
            <source>Find</source>
            <translation>Trouver</translation>
        </message>
        <message>
            <source>Segment</source>
            <translation>Segmenter</translation>
        </message>
        <message>
            <source>Compare</source>
            <translation>Comparer</translation>
        </message>
        <message>
            <source>Ask about the region, or /help</source>
            <translation>Posez une question sur la région, ou /help</translation>
        </message>
        <message>
            <source>Restart</source>
            <translation>Redémarrer</translation>
        </message>
        <message>
            <source>Auto (per task)</source>
            <translation>Auto (selon la tâche)</translation>
        </message>
        <message>
            <source>Each task goes to its default model (Manage models…)</source>
            <translation>Chaque tâche va à son modèle par défaut (Gérer les modèles…)</translation>
        </message>
        <message>
            <source>Engine: to be set up again</source>
            <translation>Moteur : à réinstaller</translation>
        </message>
        <message>
            <source>Model</source>
            <translation>Modèle</translation>
        </message>
        <message>
            <source>Manage models…</source>
            <translation>Gérer les modèles…</translation>
        </message>
        <message>
            <source>Model that answers; Auto picks the default model of each task (Manage models…)</source>
            <translation>Modèle qui répond ; Auto choisit le modèle par défaut de chaque tâche (Gérer les modèles…)</translation>
        </message>
        <message>
            <source>Download, import and export models; choose the default model of each task</source>
            <translation>Télécharger, importer et exporter des modèles ; choisir le modèle par défaut de chaque tâche</translation>
        </message>
        <message>
            <source>Start a new conversation (the result layers stay in the project)</source>
            <translation>Commencer une nouvelle conversation (les couches de résultats restent dans le projet)</translation>
        </message>
        <message>
            <source>Settings: the engine, its device and where results are saved</source>
            <translation>Paramètres : le moteur, son processeur et l’endroit où les résultats sont enregistrés</translation>
        </message>
        <message>
            <source>The raster layer to ask about (a local file)</source>
            <translation>La couche raster sur laquelle poser la question (un fichier local)</translation>
        </message>
        <message>
            <source>The earlier image, for Compare (/change)</source>
            <translation>L’image la plus ancienne, pour Comparer (/change)</translation>
        </message>
        <message>
            <source>The later image, for Compare (/change)</source>
            <translation>L’image la plus récente, pour Comparer (/change)</translation>
        </message>
        <message>
            <source>Forget the drawn region: ask about what the map shows</source>
            <translation>Oublier la région dessinée : poser la question sur ce que montre la carte</translation>
        </message>
        <message>
            <source>Describe the region in a few sentences (/describe)</source>
            <translation>Décrire la région en quelques phrases (/describe)</translation>
        </message>
        <message>
            <source>Draw boxes around the objects typed below, e.g. cars (/find)</source>
            <translation>Encadrer les objets saisis ci-dessous, p. ex. voitures (/find)</translation>
        </message>
        <message>
            <source>Outline the objects typed below as polygons, e.g. buildings (/segment)</source>
            <translation>Détourer en polygones les objets saisis ci-dessous, p. ex. bâtiments (/segment)</translation>
        </message>
        <message>
            <source>Compare the before and the after image (/change)</source>
            <translation>Comparer l’image avant et l’image après (/change)</translation>
        </message>
        <message>
            <source>A question in plain language, or a /command (/help lists them); Enter sends, Shift+Enter starts a new line</source>
            <translation>Une question en langage courant, ou une /commande (/help les liste) ; Entrée envoie, Maj+Entrée passe à la ligne</translation>
        </message>
        <message>
            <source>Conversation</source>
            <translation>Conversation</translation>
        </message>
        <message>
            <source>Models…</source>
            <translation>Modèles…</translation>
        </message>
        <message>
            <source>Manage models: download, import and export models; choose the default model of each task</source>
            <translation>Gérer les modèles : télécharger, importer et exporter des modèles ; choisir le modèle par défaut de chaque tâche</translation>
        </message>
    </context>
    <context>
        <name>Messages</name>
        <message>
            <source>The layer was removed from the project, so its request was stopped. Choose a layer and ask again.</source>
            <translation>La couche a été retirée du projet, sa requête a donc été arrêtée. Choisissez une couche et reposez la question.</translation>
        </message>
        <message>
            <source>The region cannot be converted to the layer&apos;s or the project&apos;s CRS. Draw the region again or use the current view.</source>
            <translation>La région ne peut pas être convertie dans le SCR de la couche ou du projet. Dessinez-la de nouveau ou utilisez la vue actuelle.</translation>
        </message>
        <message>
            <source>The region is smaller than one pixel of the layer. Draw a larger region.</source>
            <translation>La région est plus petite qu’un pixel de la couche. Dessinez une région plus grande.</translation>
        </message>
        <message>
            <source>your question will run when it is ready</source>
            <translation>votre question partira dès qu’il sera prêt</translation>
        </message>
        <message>
            <source>CPU, {dtype}</source>
            <translation>CPU, {dtype}</translation>
        </message>
        <message>
            <source>Engine: a package is missing ({detail}); set up the engine again</source>
            <translation>Moteur : un paquet manque ({detail}) ; installez le moteur à nouveau</translation>
        </message>
        <message>
            <source>Engine: not set up yet</source>
            <translation>Moteur : pas encore installé</translation>
        </message>
        <message>
            <source>Engine: its configuration has an error: {detail}. Correct it (Manage models…, or the settings), then Restart</source>
            <translation>Moteur : sa configuration contient une erreur : {detail}. Corrigez-la (Gérer les modèles…, ou les paramètres), puis Redémarrer</translation>
        </message>
        <message>
            <source>Engine: packages are missing; set up the engine again</source>
            <translation>Moteur : des paquets manquent ; installez le moteur à nouveau</translation>
        </message>
        <message>
            <source>GPU: {what}</source>
            <translation>GPU : {what}</translation>
        </message>
        <message>
            <source>The GPU is not used: {warning}</source>
            <translation>Le GPU n’est pas utilisé : {warning}</translation>
        </message>
        <message>
            <source>{size} GB</source>
            <translation>{size} Go</translation>
        </message>
        <message>
            <source>Unknown command. Type /help for the list.</source>
            <translation>Commande inconnue. Tapez /help pour la liste.</translation>
        </message>
        <message>
            <source>This command needs to know what to look for, e.g. /find storage tanks.</source>
            <translation>Cette commande doit savoir quoi chercher, par exemple /find réservoirs.</translation>
        </message>
        <message>
            <source>(The model read this imagery at {model} a pixel, nearer the imagery it was trained on.)</source>
            <translation>(Le modèle a lu cette image à {model} par pixel, plus près des images de son entraînement.)</translation>
        </message>
        <message>
            <source>(This imagery has {pixel} pixels; the model read it at {model}, nearer the imagery it was trained on.)</source>
            <translation>(Cette image a des pixels de {pixel} ; le modèle l’a lue à {model}, plus près des images de son entraînement.)</translation>
        </message>
        <message>
            <source>Land cover: {covers}.</source>
            <translation>Occupation du sol : {covers}.</translation>
        </message>
        <message>
            <source>Choose an image layer first.</source>
            <translation>Choisissez d’abord une couche image.</translation>
        </message>
        <message>
            <source>Choose a before and an after layer to compare.</source>
            <translation>Choisissez une couche avant et une couche après à comparer.</translation>
        </message>
        <message>
            <source>The before and the after layer are the same layer.</source>
            <translation>La couche avant et la couche après sont la même couche.</translation>
        </message>
        <message>
            <source>The region does not overlap the chosen layer. Draw a region over it or use the current view.</source>
            <translation>La région ne recouvre pas la couche choisie. Dessinez une région sur celle-ci ou utilisez la vue actuelle.</translation>
        </message>
        <message>
            <source>The engine is not ready yet. Wait until its status says ready, or check the settings.</source>
            <translation>Le moteur n’est pas encore prêt. Attendez que son état indique prêt, ou vérifiez les paramètres.</translation>
        </message>
        <message>
            <source>The layer could not be rendered for the region.</source>
            <translation>La couche n’a pas pu être rendue pour la région.</translation>
        </message>
        <message>
            <source>The answer arrived but its layer could not be written.</source>
            <translation>La réponse est arrivée mais sa couche n’a pas pu être écrite.</translation>
        </message>
        <message>
            <source>The engine cannot be reached.</source>
            <translation>Le moteur est injoignable.</translation>
        </message>
        <message>
            <source>The engine did not answer in time. Try a smaller region or a longer timeout.</source>
            <translation>Le moteur n’a pas répondu à temps. Essayez une région plus petite ou un délai plus long.</translation>
        </message>
        <message>
            <source>Cancelled.</source>
            <translation>Annulé.</translation>
        </message>
        <message>
            <source>The engine refused the token. Check the token in the settings.</source>
            <translation>Le moteur a refusé le jeton. Vérifiez le jeton dans les paramètres.</translation>
        </message>
        <message>
            <source>The region lies outside the raster.</source>
            <translation>La région est en dehors du raster.</translation>
        </message>
        <message>
            <source>The region is too large for the engine.</source>
            <translation>La région est trop grande pour le moteur.</translation>
        </message>
        <message>
            <source>The engine cannot find the raster file.</source>
            <translation>Le moteur ne trouve pas le fichier raster.</translation>
        </message>
        <message>
            <source>The engine cannot read the raster.</source>
            <translation>Le moteur ne peut pas lire le raster.</translation>
        </message>
        <message>
            <source>The engine does not know this model.</source>
            <translation>Le moteur ne connaît pas ce modèle.</translation>
        </message>
        <message>
            <source>This model cannot do that. Choose another model.</source>
            <translation>Ce modèle ne sait pas faire cela. Choisissez un autre modèle.</translation>
        </message>
        <message>
            <source>The engine could not load the model.</source>
            <translation>Le moteur n’a pas pu charger le modèle.</translation>
        </message>
        <message>
            <source>The question is too long.</source>
            <translation>La question est trop longue.</translation>
        </message>
        <message>
            <source>The image covers only a small part of the region. Zoom to the layer, or draw a region over the image.</source>
            <translation>L’image ne couvre qu’une petite partie de la région. Zoomez sur la couche ou dessinez une région sur l’image.</translation>
        </message>
        <message>
            <source>The engine reads only raster files on this computer (it was not started with --allow-remote).</source>
            <translation>Le moteur ne lit que des fichiers raster de cet ordinateur (il n’a pas été démarré avec --allow-remote).</translation>
        </message>
        <message>
            <source>The engine is busy with other requests. Ask again in a moment.</source>
            <translation>Le moteur est occupé par d’autres demandes. Posez la question à nouveau dans un instant.</translation>
        </message>
        <message>
            <source>The engine reported an error.</source>
            <translation>Le moteur a signalé une erreur.</translation>
        </message>
        <message>
            <source>Engine: restarting after a failure ({detail})</source>
            <translation>Moteur : redémarrage après une panne ({detail})</translation>
        </message>
        <message>
            <source>Engine: starting…</source>
            <translation>Moteur : démarrage…</translation>
        </message>
        <message>
            <source>Engine: ready</source>
            <translation>Moteur : prêt</translation>
        </message>
        <message>
            <source>Engine: stopped</source>
            <translation>Moteur : arrêté</translation>
        </message>
        <message>
            <source>the engine's Python interpreter was not found ({detail})</source>
            <translation>l’interpréteur Python du moteur est introuvable ({detail})</translation>
        </message>
        <message>
            <source>the engine stopped: {detail}</source>
            <translation>le moteur s’est arrêté : {detail}</translation>
        </message>
        <message>
            <source>the engine did not start within {detail}</source>
            <translation>le moteur n’a pas démarré en {detail}</translation>
        </message>
        <message>
            <source>the engine wrote no token to {detail}</source>
            <translation>le moteur n’a écrit aucun jeton dans {detail}</translation>
        </message>
        <message>
            <source>the engine cannot be reached ({detail})</source>
            <translation>le moteur est injoignable ({detail})</translation>
        </message>
        <message>
            <source>Engine: error: {reason}. Restarting…</source>
            <translation>Moteur : erreur : {reason}. Redémarrage…</translation>
        </message>
        <message>
            <source>Engine: error: {reason}</source>
            <translation>Moteur : erreur : {reason}</translation>
        </message>
        <message>
            <source>Engine: busy</source>
            <translation>Moteur : occupé</translation>
        </message>
        <message>
            <source>describe the region</source>
            <translation>décrire la région</translation>
        </message>
        <message>
            <source>draw boxes around objects, e.g. /find storage tanks</source>
            <translation>encadrer des objets, par exemple /find réservoirs</translation>
        </message>
        <message>
            <source>outline objects as polygons, e.g. /segment buildings</source>
            <translation>détourer des objets en polygones, par exemple /segment bâtiments</translation>
        </message>
        <message>
            <source>compare the before and the after layer</source>
            <translation>comparer la couche avant et la couche après</translation>
        </message>
        <message>
            <source>ask about the region (plain text does the same)</source>
            <translation>poser une question sur la région (le texte libre fait de même)</translation>
        </message>
        <message>
            <source>this list</source>
            <translation>cette liste</translation>
        </message>
        <message>
            <source>A search runs over a raster file on this computer; this layer is not one (web, virtual or in-memory). Save it as a GeoTIFF first.</source>
            <translation>Une recherche porte sur un fichier raster de cet ordinateur ; cette couche n’en est pas un (couche web, virtuelle ou en mémoire). Enregistrez-la d’abord en GeoTIFF.</translation>
        </message>
        <message>
            <source>rank the layer's tiles (in the region, else the whole layer) by a description, e.g. /search a harbour with many boats</source>
            <translation>classer les tuiles de la couche (dans la région, sinon toute la couche) selon une description, par ex. /search un port avec beaucoup de bateaux</translation>
        </message>
        <message>
            <source>No tile matches “{description}”.</source>
            <translation>Aucune tuile ne correspond à « {description} ».</translation>
        </message>
        <message>
            <source>north-west</source>
            <translation>nord-ouest</translation>
        </message>
        <message>
            <source>north</source>
            <translation>nord</translation>
        </message>
        <message>
            <source>north-east</source>
            <translation>nord-est</translation>
        </message>
        <message>
            <source>west</source>
            <translation>ouest</translation>
        </message>
        <message>
            <source>centre</source>
            <translation>centre</translation>
        </message>
        <message>
            <source>east</source>
            <translation>est</translation>
        </message>
        <message>
            <source>south-west</source>
            <translation>sud-ouest</translation>
        </message>
        <message>
            <source>south</source>
            <translation>sud</translation>
        </message>
        <message>
            <source>south-east</source>
            <translation>sud-est</translation>
        </message>
        <message>
            <source>of the layer</source>
            <translation>de la couche</translation>
        </message>
        <message>
            <source>of the region</source>
            <translation>de la région</translation>
        </message>
        <message>
            <source>#{rank} {place} ({percent}%)</source>
            <translation>n° {rank} {place} ({percent} %)</translation>
        </message>
        <message>
            <source>Best matches for “{description}” ({count} of {searched} tiles {area}): {matches}.</source>
            <translation>Meilleures correspondances pour « {description} » ({count} tuiles sur {searched} {area}) : {matches}.</translation>
        </message>
        <message>
            <source>The region is a single tile: draw a larger region, or clear it to search the whole layer, to compare tiles.</source>
            <translation>La région tient en une seule tuile : dessinez une région plus grande, ou effacez-la pour chercher dans toute la couche, afin de comparer des tuiles.</translation>
        </message>
        <message>
            <source>Similarity is relative to the tiles searched (100% = the best); tiles under {floor}% are not shown.</source>
            <translation>La similarité est relative aux tuiles examinées (100 % = la meilleure) ; les tuiles sous {floor} % ne sont pas montrées.</translation>
        </message>
    </context>
    <context>
        <name>RSAssistantPlugin</name>
        <message>
            <source>RS Assistant</source>
            <translation>RS Assistant</translation>
        </message>
        <message>
            <source>RS Assistant chat</source>
            <translation>Discussion RS Assistant</translation>
        </message>
        <message>
            <source>Select a region</source>
            <translation>Sélectionner une région</translation>
        </message>
        <message>
            <source>RS Assistant settings…</source>
            <translation>Paramètres de RS Assistant…</translation>
        </message>
        <message>
            <source>Manage models…</source>
            <translation>Gérer les modèles…</translation>
        </message>
        <message>
            <source>Set up the engine…</source>
            <translation>Installer le moteur…</translation>
        </message>
    </context>
    <context>
        <name>SettingsDialog</name>
        <message>
            <source>Asking {url}…</source>
            <translation>Interrogation de {url}…</translation>
        </message>
        <message>
            <source>CUDA {version}</source>
            <translation>CUDA {version}</translation>
        </message>
        <message>
            <source>Next to the project (a GeoPackage)</source>
            <translation>À côté du projet (un GeoPackage)</translation>
        </message>
        <message>
            <source>Set up by the plugin (leave empty)</source>
            <translation>Installé par l’extension (laisser vide)</translation>
        </message>
        <message>
            <source>Set up the engine first (button in the dock).</source>
            <translation>Installez d’abord le moteur (bouton dans le panneau).</translation>
        </message>
        <message>
            <source>Testing the engine…</source>
            <translation>Test du moteur…</translation>
        </message>
        <message>
            <source>The engine answered something unexpected: {error}</source>
            <translation>Le moteur a répondu de façon inattendue : {error}</translation>
        </message>
        <message>
            <source>The engine at {url} cannot be reached: {error}</source>
            <translation>Le moteur à {url} est injoignable : {error}</translation>
        </message>
        <message>
            <source>The engine cannot start (exit code {code}): {message}</source>
            <translation>Le moteur ne peut pas démarrer (code de sortie {code}) : {message}</translation>
        </message>
        <message>
            <source>The engine works: {device}</source>
            <translation>Le moteur fonctionne : {device}</translation>
        </message>
        <message>
            <source>The engine works: {device} · PyTorch {torch} · {cuda}</source>
            <translation>Le moteur fonctionne : {device} · PyTorch {torch} · {cuda}</translation>
        </message>
        <message>
            <source>The engine's Python could not be started: {python}</source>
            <translation>Le Python du moteur n’a pas pu être lancé : {python}</translation>
        </message>
        <message>
            <source>The engine's environment lacks a package. Set up the engine again (button in the dock).</source>
            <translation>Il manque un paquet dans l’environnement du moteur. Installez le moteur à nouveau (bouton dans le panneau).</translation>
        </message>
        <message>
            <source>The engine's environment lacks the package “{module}”. Set up the engine again (button in the dock).</source>
            <translation>Il manque le paquet « {module} » dans l’environnement du moteur. Installez le moteur à nouveau (bouton dans le panneau).</translation>
        </message>
        <message>
            <source>The test did not finish within {seconds:g} s.</source>
            <translation>Le test ne s’est pas terminé en {seconds:g} s.</translation>
        </message>
        <message>
            <source>auto: CUDA, else MPS, else CPU</source>
            <translation>auto : CUDA, sinon MPS, sinon CPU</translation>
        </message>
        <message>
            <source>no CUDA (a CPU-only build)</source>
            <translation>sans CUDA (une version pour CPU seulement)</translation>
        </message>
        <message>
            <source>Test</source>
            <translation>Tester</translation>
        </message>
        <message>
            <source>Check the engine with these settings: its device, PyTorch and CUDA, and what is missing</source>
            <translation>Vérifier le moteur avec ces paramètres : son matériel, PyTorch et CUDA, et ce qui manque</translation>
        </message>
        <message>
            <source>The token in the engine's token file</source>
            <translation>Le jeton du fichier de jeton du moteur</translation>
        </message>
        <message>
            <source>Give the URL of the running engine, e.g. http://127.0.0.1:8765.</source>
            <translation>Indiquez l’URL du moteur en marche, par exemple http://127.0.0.1:8765.</translation>
        </message>
        <message>
            <source>RS Assistant settings</source>
            <translation>Paramètres de RS Assistant</translation>
        </message>
        <message>
            <source>Start the engine with a Python interpreter</source>
            <translation>Démarrer le moteur avec un interpréteur Python</translation>
        </message>
        <message>
            <source>Python interpreter</source>
            <translation>Interpréteur Python</translation>
        </message>
        <message>
            <source>The Python of the engine's environment (with torch), not QGIS's own</source>
            <translation>Le Python de l’environnement du moteur (avec torch), pas celui de QGIS</translation>
        </message>
        <message>
            <source>Models file</source>
            <translation>Fichier des modèles</translation>
        </message>
        <message>
            <source>A TOML file naming models and their local checkpoints; empty: the built-in model</source>
            <translation>Un fichier TOML qui nomme les modèles et leurs poids locaux ; vide : le modèle intégré</translation>
        </message>
        <message>
            <source>TOML (*.toml)</source>
            <translation>TOML (*.toml)</translation>
        </message>
        <message>
            <source>Device</source>
            <translation>Périphérique</translation>
        </message>
        <message>
            <source>Restarts after a crash</source>
            <translation>Redémarrages après une panne</translation>
        </message>
        <message>
            <source>Start-up timeout</source>
            <translation>Délai de démarrage</translation>
        </message>
        <message>
            <source>Connect to a running engine</source>
            <translation>Se connecter à un moteur en marche</translation>
        </message>
        <message>
            <source>URL</source>
            <translation>URL</translation>
        </message>
        <message>
            <source>Token</source>
            <translation>Jeton</translation>
        </message>
        <message>
            <source>Requests and results</source>
            <translation>Requêtes et résultats</translation>
        </message>
        <message>
            <source>Request timeout</source>
            <translation>Délai des requêtes</translation>
        </message>
        <message>
            <source>Largest image side</source>
            <translation>Plus grand côté d’image</translation>
        </message>
        <message>
            <source>Write result layers to</source>
            <translation>Écrire les couches de résultats dans</translation>
        </message>
        <message>
            <source>Empty: a GeoPackage next to the project</source>
            <translation>Vide : un GeoPackage à côté du projet</translation>
        </message>
    </context>
    <context>
        <name>TranscriptRenderer</name>
        <message>
            <source>{count} tile(s), best first</source>
            <translation>{count} tuile(s), la meilleure d’abord</translation>
        </message>
        <message>
            <source>Show {count} more below {threshold}</source>
            <translation>Afficher {count} de plus sous {threshold}</translation>
        </message>
        <message>
            <source>Zoom to it on the map</source>
            <translation>Zoomer dessus sur la carte</translation>
        </message>
        <message>
            <source>{area} in all</source>
            <translation>{area} au total</translation>
        </message>
        <message>
            <source>{count} feature(s): {classes}</source>
            <translation>{count} entité(s) : {classes}</translation>
        </message>
        <message>
            <source>… and {count} more in the layer’s attribute table</source>
            <translation>… et {count} de plus dans la table attributaire de la couche</translation>
        </message>
        <message>
            <source>Waiting for the engine to start…</source>
            <translation>En attente du démarrage du moteur…</translation>
        </message>
        <message>
            <source>Assistant</source>
            <translation>Assistant</translation>
        </message>
        <message>
            <source>{count} feature(s) added as layer(s): {names}</source>
            <translation>{count} entité(s) ajoutée(s) en couche(s) : {names}</translation>
        </message>
        <message>
            <source>You</source>
            <translation>Vous</translation>
        </message>
        <message>
            <source>Commands:</source>
            <translation>Commandes :</translation>
        </message>
        <message>
            <source>Working…</source>
            <translation>En cours…</translation>
        </message>
        <message>
            <source>No answer and nothing found.</source>
            <translation>Pas de réponse et rien trouvé.</translation>
        </message>
    </context>
    <context>
        <name>ProcessingEngine</name>
        <message>
            <source>The engine is not set up yet: click “Set up the engine” in the RS Assistant panel, or choose the engine's Python in the settings.</source>
            <translation>Le moteur n’est pas encore installé : cliquez sur « Installer le moteur » dans le panneau RS Assistant, ou choisissez le Python du moteur dans les paramètres.</translation>
        </message>
        <message>
            <source>The engine exited while starting (code {code}): {detail}</source>
            <translation>Le moteur s’est arrêté pendant son démarrage (code {code}) : {detail}</translation>
        </message>
        <message>
            <source>The engine did not start within {seconds:g} s.</source>
            <translation>Le moteur n’a pas démarré en {seconds:g} s.</translation>
        </message>
        <message>
            <source>The engine wrote no token to {path}.</source>
            <translation>Le moteur n’a écrit aucun jeton dans {path}.</translation>
        </message>
        <message>
            <source>Cannot start the engine with {python}: {error}</source>
            <translation>Impossible de démarrer le moteur avec {python} : {error}</translation>
        </message>
    </context>
    <context>
        <name>BatchAlgorithm</name>
        <message>
            <source>The extent lies outside the raster.</source>
            <translation>L’emprise est en dehors du raster.</translation>
        </message>
        <message>
            <source>The tile size is larger than the engine allows.</source>
            <translation>La taille des tuiles dépasse ce que le moteur accepte.</translation>
        </message>
        <message>
            <source>The job needs a different number of rasters.</source>
            <translation>Ce traitement demande un autre nombre de rasters.</translation>
        </message>
        <message>
            <source>The CRS of the extent or of the raster is not known to the engine.</source>
            <translation>Le moteur ne connaît pas le SCR de l’emprise ou du raster.</translation>
        </message>
        <message>
            <source>The engine refused the parameters.</source>
            <translation>Le moteur a refusé les paramètres.</translation>
        </message>
        <message>
            <source>The engine failed while running the job.</source>
            <translation>Le moteur a échoué pendant le traitement.</translation>
        </message>
        <message>
            <source>Could not write to the output: {error}</source>
            <translation>Impossible d’écrire dans la sortie : {error}</translation>
        </message>
        <message>
            <source>Raster layer (a local file)</source>
            <translation>Couche raster (un fichier local)</translation>
        </message>
        <message>
            <source>What to look for</source>
            <translation>Ce qu’il faut chercher</translation>
        </message>
        <message>
            <source>Output</source>
            <translation>Sortie</translation>
        </message>
        <message>
            <source>Large areas</source>
            <translation>Grandes zones</translation>
        </message>
        <message>
            <source>Extent (empty: the whole raster)</source>
            <translation>Emprise (vide : tout le raster)</translation>
        </message>
        <message>
            <source>Model</source>
            <translation>Modèle</translation>
        </message>
        <message>
            <source>Tile size (pixels)</source>
            <translation>Taille des tuiles (pixels)</translation>
        </message>
        <message>
            <source>Overlap between tiles (pixels)</source>
            <translation>Recouvrement entre tuiles (pixels)</translation>
        </message>
        <message>
            <source>Tiles per model batch (0: the model's own)</source>
            <translation>Tuiles par lot du modèle (0 : celui du modèle)</translation>
        </message>
        <message>
            <source>Score threshold</source>
            <translation>Seuil de score</translation>
        </message>
        <message>
            <source>Number of best tiles to return</source>
            <translation>Nombre de meilleures tuiles à renvoyer</translation>
        </message>
        <message>
            <source>Resume an interrupted run into the same output</source>
            <translation>Reprendre une exécution interrompue dans la même sortie</translation>
        </message>
        <message>
            <source>“{name}” is not a raster layer: choose a raster layer.</source>
            <translation>« {name} » n’est pas une couche raster : choisissez une couche raster.</translation>
        </message>
        <message>
            <source>“{name}” is not a raster file on this computer (a web, virtual or in-memory layer); the engine reads rasters itself. Save it as a GeoTIFF first and use that.</source>
            <translation>« {name} » n’est pas un fichier raster sur cet ordinateur (couche web, virtuelle ou en mémoire) ; le moteur lit lui-même les rasters. Enregistrez-la d’abord en GeoTIFF et utilisez celui-ci.</translation>
        </message>
        <message>
            <source>Resuming: {tiles} tile(s) and {features} feature(s) kept from the earlier run.</source>
            <translation>Reprise : {tiles} tuile(s) et {features} entité(s) conservées de l’exécution précédente.</translation>
        </message>
        <message>
            <source>{count} feature(s) that were not polygons were left out.</source>
            <translation>{count} entité(s) qui n’étaient pas des polygones ont été écartées.</translation>
        </message>
        <message>
            <source>{tiles} tile(s) in the grid, {todo} to do.</source>
            <translation>{tiles} tuile(s) dans la grille, {todo} à traiter.</translation>
        </message>
        <message>
            <source>Cancelled after {done} of {tiles} tile(s).</source>
            <translation>Annulé après {done} tuile(s) sur {tiles}.</translation>
        </message>
        <message>
            <source>The engine stopped answering after {done} of {tiles} tile(s) ({detail}).</source>
            <translation>Le moteur a cessé de répondre après {done} tuile(s) sur {tiles} ({detail}).</translation>
        </message>
        <message>
            <source>The {count} feature(s) written so far are kept; run the algorithm again with the same parameters to resume.</source>
            <translation>Les {count} entité(s) déjà écrites sont conservées ; relancez l’algorithme avec les mêmes paramètres pour reprendre.</translation>
        </message>
        <message>
            <source>The engine's model that runs the job: “auto” lets the engine choose the model set for this task (Manage models…), “default” is the built-in model, or a model's name.</source>
            <translation>Le modèle du moteur qui exécute la tâche : « auto » laisse le moteur choisir le modèle défini pour cette tâche (Gérer les modèles…), « default » est le modèle intégré, ou le nom d’un modèle.</translation>
        </message>
        <message>
            <source>Resume an interrupted run into the same output file (file outputs only)</source>
            <translation>Reprendre une exécution interrompue dans le même fichier de sortie (sorties fichier uniquement)</translation>
        </message>
        <message>
            <source>A run that stopped early keeps its features in the output file; run again with the same parameters to do only the remaining tiles. A temporary layer cannot be resumed.</source>
            <translation>Une exécution arrêtée en cours garde ses entités dans le fichier de sortie ; relancez avec les mêmes paramètres pour ne traiter que les tuiles restantes. Une couche temporaire ne peut pas être reprise.</translation>
        </message>
    </context>
    <context>
        <name>DescribeTilesAlgorithm</name>
        <message>
            <source>Describe tiles</source>
            <translation>Décrire les tuiles</translation>
        </message>
        <message>
            <source>Cuts the raster (or the extent) into tiles and has the model describe each one. The output is the grid: one polygon per tile, in the raster's CRS, with its caption in the field “text”. An interrupted run resumes where it stopped when run again with the same parameters.</source>
            <translation>Découpe le raster (ou l’emprise) en tuiles et fait décrire chacune par le modèle. La sortie est la grille : un polygone par tuile, dans le SCR du raster, avec sa description dans le champ « text ». Une exécution interrompue reprend où elle s’était arrêtée quand on la relance avec les mêmes paramètres.</translation>
        </message>
        <message>
            <source>Described tiles</source>
            <translation>Tuiles décrites</translation>
        </message>
    </context>
    <context>
        <name>FindObjectsAlgorithm</name>
        <message>
            <source>Find objects</source>
            <translation>Trouver des objets</translation>
        </message>
        <message>
            <source>Finds the objects described (e.g. “storage tanks”) over the whole raster or an extent, tile by tile with overlapping tiles; an object seen by two tiles is kept once. The output holds one box per object, in the raster's CRS, with its label and score.</source>
            <translation>Trouve les objets décrits (par ex. « réservoirs ») sur tout le raster ou sur une emprise, tuile par tuile avec des tuiles qui se recouvrent ; un objet vu par deux tuiles n’est gardé qu’une fois. La sortie contient un rectangle par objet, dans le SCR du raster, avec son libellé et son score.</translation>
        </message>
        <message>
            <source>Objects to find</source>
            <translation>Objets à trouver</translation>
        </message>
        <message>
            <source>Found objects</source>
            <translation>Objets trouvés</translation>
        </message>
    </context>
    <context>
        <name>SegmentLayerAlgorithm</name>
        <message>
            <source>Segment layer</source>
            <translation>Segmenter une couche</translation>
        </message>
        <message>
            <source>Outlines the objects described (e.g. “buildings”) over the whole raster or an extent, tile by tile with overlapping tiles. Masks are merged across tiles, so that an object crossing a tile seam becomes one polygon. The output is in the raster's CRS.</source>
            <translation>Détoure les objets décrits (par ex. « bâtiments ») sur tout le raster ou sur une emprise, tuile par tuile avec des tuiles qui se recouvrent. Les masques sont fusionnés d’une tuile à l’autre : un objet à cheval sur une limite de tuiles devient un seul polygone. La sortie est dans le SCR du raster.</translation>
        </message>
        <message>
            <source>Objects to outline</source>
            <translation>Objets à détourer</translation>
        </message>
        <message>
            <source>Outlines</source>
            <translation>Contours</translation>
        </message>
    </context>
    <context>
        <name>ChangeOverAreaAlgorithm</name>
        <message>
            <source>Change over area</source>
            <translation>Changements sur une zone</translation>
        </message>
        <message>
            <source>Compares a before and an after raster over the whole area or an extent, tile by tile (the after raster is read on the before raster's grid). The output holds the change polygons, merged across tile seams, and each tile with a caption of what changed in it (field “text”), in the before raster's CRS.</source>
            <translation>Compare un raster avant et un raster après sur toute la zone ou sur une emprise, tuile par tuile (le raster après est lu sur la grille du raster avant). La sortie contient les polygones de changement, fusionnés d’une tuile à l’autre, et chaque tuile avec une description de ce qui y a changé (champ « text »), dans le SCR du raster avant.</translation>
        </message>
        <message>
            <source>After (a local raster file)</source>
            <translation>Après (un fichier raster local)</translation>
        </message>
        <message>
            <source>Before (a local raster file)</source>
            <translation>Avant (un fichier raster local)</translation>
        </message>
        <message>
            <source>Changes</source>
            <translation>Changements</translation>
        </message>
    </context>
    <context>
        <name>SearchLayerAlgorithm</name>
        <message>
            <source>Search layer by text</source>
            <translation>Chercher dans une couche par texte</translation>
        </message>
        <message>
            <source>Ranks the tiles of the raster (or the extent) by how well they match a description such as “a harbour with many boats” and returns the best ones as polygons with their rank (1 = best) and score. The engine computes a layer's image embeddings once and reuses them for later searches.</source>
            <translation>Classe les tuiles du raster (ou de l’emprise) selon leur ressemblance avec une description comme « un port avec beaucoup de bateaux » et renvoie les meilleures sous forme de polygones avec leur rang (1 = la meilleure) et leur score. Le moteur calcule une seule fois les plongements d’image d’une couche et les réutilise pour les recherches suivantes.</translation>
        </message>
        <message>
            <source>Description to search for</source>
            <translation>Description à chercher</translation>
        </message>
        <message>
            <source>Best matching tiles</source>
            <translation>Tuiles les plus proches</translation>
        </message>
    </context>
    <context>
        <name>SetupPanel</name>
        <message>
            <source>Automatic: {build}</source>
            <translation>Automatique : {build}</translation>
        </message>
        <message>
            <source>CPU</source>
            <translation>CPU</translation>
        </message>
        <message>
            <source>NVIDIA CUDA</source>
            <translation>NVIDIA CUDA</translation>
        </message>
        <message>
            <source>Folder of the engine's environment</source>
            <translation>Dossier de l’environnement du moteur</translation>
        </message>
        <message>
            <source>Folder of wheels</source>
            <translation>Dossier de wheels</translation>
        </message>
        <message>
            <source>PyTorch for NVIDIA GPUs (CUDA), transformers, GDAL's rasterio…</source>
            <translation>PyTorch pour GPU NVIDIA (CUDA), transformers, rasterio de GDAL…</translation>
        </message>
        <message>
            <source>PyTorch for the CPU, transformers, GDAL's rasterio…</source>
            <translation>PyTorch pour le CPU, transformers, rasterio de GDAL…</translation>
        </message>
        <message>
            <source>RS Assistant runs its models in a Python environment of its own: about {size} GB ({what}) will be installed in {folder}, which needs {free} GB free while it installs.</source>
            <translation>RS Assistant exécute ses modèles dans son propre environnement Python : environ {size} Go ({what}) seront installés dans {folder}, qui doit avoir {free} Go libres pendant l’installation.</translation>
        </message>
        <message>
            <source>RS Assistant: setting up the engine</source>
            <translation>RS Assistant : installation du moteur</translation>
        </message>
        <message>
            <source>Resume set-up</source>
            <translation>Reprendre l’installation</translation>
        </message>
        <message>
            <source>Set up again</source>
            <translation>Réinstaller</translation>
        </message>
        <message>
            <source>Set up the engine</source>
            <translation>Installer le moteur</translation>
        </message>
        <message>
            <source>Set-up cancelled. What is already installed is kept: it can be resumed.</source>
            <translation>Installation annulée. Ce qui est déjà installé est conservé : elle peut être reprise.</translation>
        </message>
        <message>
            <source>Setting up the engine in {folder}…</source>
            <translation>Installation du moteur dans {folder}…</translation>
        </message>
        <message>
            <source>Step {step}</source>
            <translation>Étape {step}</translation>
        </message>
        <message>
            <source>The engine is set up ({python}). Starting it…</source>
            <translation>Le moteur est installé ({python}). Démarrage…</translation>
        </message>
        <message>
            <source>The engine's Python was not found ({path}). Set up the engine again, or choose another Python in the settings.</source>
            <translation>Le Python du moteur est introuvable ({path}). Réinstallez le moteur ou choisissez un autre Python dans les paramètres.</translation>
        </message>
        <message>
            <source>The engine's environment lacks packages it needs ({detail}). Setting it up again repairs it.</source>
            <translation>Il manque à l’environnement du moteur des paquets nécessaires ({detail}). Le réinstaller le répare.</translation>
        </message>
        <message>
            <source>The set-up failed: {error}</source>
            <translation>L’installation a échoué : {error}</translation>
        </message>
        <message>
            <source>the set-up ended without naming the engine's Python</source>
            <translation>l’installation s’est terminée sans indiquer le Python du moteur</translation>
        </message>
        <message>
            <source>PyTorch build</source>
            <translation>Version de PyTorch</translation>
        </message>
        <message>
            <source>CUDA runs the models on an NVIDIA GPU; the CPU build works everywhere</source>
            <translation>CUDA exécute les modèles sur un GPU NVIDIA ; la version CPU fonctionne partout</translation>
        </message>
        <message>
            <source>Advanced</source>
            <translation>Avancé</translation>
        </message>
        <message>
            <source>Package index</source>
            <translation>Index de paquets</translation>
        </message>
        <message>
            <source>https://pypi.org/simple (default)</source>
            <translation>https://pypi.org/simple (par défaut)</translation>
        </message>
        <message>
            <source>A PyPI mirror, e.g. your organisation's; empty: pip's own configuration</source>
            <translation>Un miroir de PyPI, par exemple celui de votre organisation ; vide : la configuration de pip</translation>
        </message>
        <message>
            <source>Proxy</source>
            <translation>Proxy</translation>
        </message>
        <message>
            <source>http://user:password@proxy:port</source>
            <translation>http://utilisateur:motdepasse@proxy:port</translation>
        </message>
        <message>
            <source>Offline packages</source>
            <translation>Paquets hors ligne</translation>
        </message>
        <message>
            <source>a folder of wheels (no download)</source>
            <translation>un dossier de wheels (sans téléchargement)</translation>
        </message>
        <message>
            <source>A folder holding the engine's wheels (made with pip download), for computers without internet</source>
            <translation>Un dossier contenant les wheels du moteur (faites avec pip download), pour les ordinateurs sans internet</translation>
        </message>
        <message>
            <source>Choose the folder</source>
            <translation>Choisir le dossier</translation>
        </message>
        <message>
            <source>Install into</source>
            <translation>Installer dans</translation>
        </message>
        <message>
            <source>The folder of the engine's Python environment</source>
            <translation>Le dossier de l’environnement Python du moteur</translation>
        </message>
        <message>
            <source>Cancel</source>
            <translation>Annuler</translation>
        </message>
        <message>
            <source>Back to the chat</source>
            <translation>Retour à la discussion</translation>
        </message>
    </context>
    <context>
        <name>ModelManagerDialog</name>
        <message>
            <source>A model that only turns boxes into masks (SAM, SAM 2.1) segments the boxes of the model chosen for Find.</source>
            <translation>Un modèle qui ne fait que transformer des boîtes en masques (SAM, SAM 2.1) segmente les boîtes du modèle choisi pour Trouver.</translation>
        </message>
        <message>
            <source>Built in</source>
            <translation>Intégré</translation>
        </message>
        <message>
            <source>Built-in (default)</source>
            <translation>Intégré (par défaut)</translation>
        </message>
        <message>
            <source>Bundle written: {path}</source>
            <translation>Paquet écrit : {path}</translation>
        </message>
        <message>
            <source>Cancelled.</source>
            <translation>Annulé.</translation>
        </message>
        <message>
            <source>Cancelled. Download again to resume where it stopped.</source>
            <translation>Annulé. Téléchargez à nouveau pour reprendre là où il s’est arrêté.</translation>
        </message>
        <message>
            <source>Checkpoint folder to import</source>
            <translation>Dossier de checkpoint à importer</translation>
        </message>
        <message>
            <source>Download</source>
            <translation>Télécharger</translation>
        </message>
        <message>
            <source>Download again</source>
            <translation>Télécharger à nouveau</translation>
        </message>
        <message>
            <source>Downloaded and registered.</source>
            <translation>Téléchargé et enregistré.</translation>
        </message>
        <message>
            <source>Downloaded {done} of {total}</source>
            <translation>{done} téléchargés sur {total}</translation>
        </message>
        <message>
            <source>Downloaded, not registered: download again to register it</source>
            <translation>Téléchargé, non enregistré : téléchargez-le à nouveau pour l’enregistrer</translation>
        </message>
        <message>
            <source>Downloading {name}</source>
            <translation>Téléchargement de {name}</translation>
        </message>
        <message>
            <source>Export {name} as a bundle</source>
            <translation>Exporter {name} en paquet</translation>
        </message>
        <message>
            <source>Exporting {name}</source>
            <translation>Export de {name}</translation>
        </message>
        <message>
            <source>Files missing: download or import it again</source>
            <translation>Fichiers manquants : téléchargez-le ou importez-le à nouveau</translation>
        </message>
        <message>
            <source>Hugging Face token</source>
            <translation>Jeton Hugging Face</translation>
        </message>
        <message>
            <source>Imported and registered.</source>
            <translation>Importé et enregistré.</translation>
        </message>
        <message>
            <source>Importing {path}</source>
            <translation>Import de {path}</translation>
        </message>
        <message>
            <source>It failed: {error}</source>
            <translation>Échec : {error}</translation>
        </message>
        <message>
            <source>Listing the models…</source>
            <translation>Liste des modèles en cours…</translation>
        </message>
        <message>
            <source>Model bundle to import</source>
            <translation>Paquet de modèle à importer</translation>
        </message>
        <message>
            <source>Models file: {path}</source>
            <translation>Fichier des modèles : {path}</translation>
        </message>
        <message>
            <source>Not downloaded</source>
            <translation>Non téléchargé</translation>
        </message>
        <message>
            <source>Not downloaded: needs a Hugging Face token</source>
            <translation>Non téléchargé : nécessite un jeton Hugging Face</translation>
        </message>
        <message>
            <source>Ready</source>
            <translation>Prêt</translation>
        </message>
        <message>
            <source>The engine's Python could not start ({python}).</source>
            <translation>Le Python du moteur n’a pas pu démarrer ({python}).</translation>
        </message>
        <message>
            <source>The model list failed: {error}</source>
            <translation>La liste des modèles a échoué : {error}</translation>
        </message>
        <message>
            <source>Zip bundles (*.zip)</source>
            <translation>Paquets zip (*.zip)</translation>
        </message>
        <message>
            <source>the built-in model</source>
            <translation>le modèle intégré</translation>
        </message>
        <message>
            <source>{name} (not available)</source>
            <translation>{name} (indisponible)</translation>
        </message>
        <message>
            <source>{name} is gated: accept its licence on https://huggingface.co/{repo} with your account, then paste a read token from https://huggingface.co/settings/tokens (used for this download only).</source>
            <translation>{name} est à accès restreint : acceptez sa licence sur https://huggingface.co/{repo} avec votre compte, puis collez un jeton de lecture de https://huggingface.co/settings/tokens (utilisé pour ce seul téléchargement).</translation>
        </message>
        <message>
            <source>{task} now uses {model}.</source>
            <translation>{task} utilise maintenant {model}.</translation>
        </message>
        <message>
            <source>RS Assistant models</source>
            <translation>Modèles de RS Assistant</translation>
        </message>
        <message>
            <source>The engine is not set up yet: models are listed, downloaded and imported by the engine's own Python.</source>
            <translation>Le moteur n’est pas encore installé : les modèles sont listés, téléchargés et importés par le Python du moteur.</translation>
        </message>
        <message>
            <source>Set up the engine…</source>
            <translation>Installer le moteur…</translation>
        </message>
        <message>
            <source>Model</source>
            <translation>Modèle</translation>
        </message>
        <message>
            <source>Tasks</source>
            <translation>Tâches</translation>
        </message>
        <message>
            <source>Licence</source>
            <translation>Licence</translation>
        </message>
        <message>
            <source>Memory CPU / GPU</source>
            <translation>Mémoire CPU / GPU</translation>
        </message>
        <message>
            <source>Status</source>
            <translation>État</translation>
        </message>
        <message>
            <source>Download the chosen catalogue model (a second run resumes)</source>
            <translation>Télécharger le modèle choisi du catalogue (une deuxième fois reprend)</translation>
        </message>
        <message>
            <source>Import folder…</source>
            <translation>Importer un dossier…</translation>
        </message>
        <message>
            <source>Register a checkpoint folder already on this computer</source>
            <translation>Enregistrer un dossier de checkpoint déjà sur cet ordinateur</translation>
        </message>
        <message>
            <source>Import bundle (zip)…</source>
            <translation>Importer un paquet (zip)…</translation>
        </message>
        <message>
            <source>Register a model from an offline bundle made with Export bundle</source>
            <translation>Enregistrer un modèle depuis un paquet hors ligne fait avec Exporter un paquet</translation>
        </message>
        <message>
            <source>Export bundle…</source>
            <translation>Exporter un paquet…</translation>
        </message>
        <message>
            <source>Write the chosen model (weights and its entry) to a zip for a computer without internet</source>
            <translation>Écrire le modèle choisi (poids et entrée) dans un zip pour un ordinateur sans internet</translation>
        </message>
        <message>
            <source>Refresh</source>
            <translation>Actualiser</translation>
        </message>
        <message>
            <source>Cancel</source>
            <translation>Annuler</translation>
        </message>
        <message>
            <source>Default model per task (used when the chat's model is Auto)</source>
            <translation>Modèle par défaut de chaque tâche (utilisé quand le modèle de la discussion est Auto)</translation>
        </message>
        <message>
            <source>Describe</source>
            <translation>Décrire</translation>
        </message>
        <message>
            <source>Find</source>
            <translation>Trouver</translation>
        </message>
        <message>
            <source>Segment</source>
            <translation>Segmenter</translation>
        </message>
        <message>
            <source>Change</source>
            <translation>Changements</translation>
        </message>
        <message>
            <source>Chat</source>
            <translation>Discussion</translation>
        </message>
        <message>
            <source>Search</source>
            <translation>Rechercher</translation>
        </message>
    </context>
    <context>
        <name>ModelWidgetWrapper</name>
        <message>
            <source>The engine chooses the model set for this task (Manage models…)</source>
            <translation>Le moteur choisit le modèle défini pour cette tâche (Gérer les modèles…)</translation>
        </message>
        <message>
            <source>The engine's built-in model</source>
            <translation>Le modèle intégré du moteur</translation>
        </message>
        <message>
            <source>Backend: {backend}</source>
            <translation>Moteur : {backend}</translation>
        </message>
    </context>
    <context>
        <name>Ground</name>
        <message>
            <source>{w} × {h} {unit}</source>
            <translation>{w} × {h} {unit}</translation>
        </message>
    </context>
    <context>
        <name>ResultLayerWriter</name>
        <message>
            <source>RS Assistant</source>
            <translation>RS Assistant</translation>
        </message>
        <message>
            <source>RS Assistant: where should this project's results go?</source>
            <translation>RS Assistant : où enregistrer les résultats de ce projet ?</translation>
        </message>
        <message>
            <source>Use this folder</source>
            <translation>Utiliser ce dossier</translation>
        </message>
        <message>
            <source>no folder was chosen for this project's results, so the features were not saved; ask again to choose one</source>
            <translation>aucun dossier n’a été choisi pour les résultats de ce projet, les entités n’ont donc pas été enregistrées ; reposez la question pour en choisir un</translation>
        </message>
        <message>
            <source>{folder} holds the data of {layers}. Choose another folder, so that results never mix with the data (a new folder beside it will do).</source>
            <translation>{folder} contient les données de {layers}. Choisissez un autre dossier, pour que les résultats ne se mêlent jamais aux données (un nouveau dossier à côté convient).</translation>
        </message>
    </context>
</TS>
