<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE TS>
<TS version="2.1" language="fr_FR">
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
</context>
<context>
    <name>ChatDock</name>
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
        <source>Send</source>
        <translation>Envoyer</translation>
    </message>
    <message>
        <source>New chat</source>
        <translation>Nouvelle discussion</translation>
    </message>
</context>
</TS>
