"""More frames for the training corpus, mostly French: the phrasing the first corpus lacked.

Written after the model missed French texts of the dev set that call for violence without
naming a weapon or a plan (pointing at an unguarded place, short slogans), that celebrate an
attack by hoping for the next one, that spread a manifesto or a link, and that dehumanise by
comparing people to animals; and after it sent to review French counter-speech and news that
talk about the attack video. The frames below are new sentences on those themes, in the
registers people write in (texting without accents, slang, emojis, long and short posts),
not the dev texts reworded, and nothing from the held-out set. `corpus.py` appends them to
its frames.
"""

from __future__ import annotations

MORE_FR: dict[tuple[str, str], list[str]] = {
    ("violent_extremism", "incitement"): [
        "{target} n'a aucune protection le dimanche matin. À bon entendeur.",
        "Quelqu'un doit s'occuper de {group}, et vite. Vous savez où ils dorment.",
        "Visez là où ça fait mal : {target}, aux heures de pointe.",
        "Chaque frère qui a du courage sait ce qui lui reste à faire à {city}.",
        "On n'attend plus rien de l'État. À nous de nettoyer {place}, {weapon} à la main.",
        "Dressez la liste de leurs adresses et rendez-leur visite une par une.",
        "Si t'es un homme tu prends {weapon} et tu descends à {target} ce soir.",
        "les gars faut y aller a {target} avec {weapon}, ils sont tous la le samedi",
        "Ne laissez aucun survivant à {target}.",
        "Le jour J approche. {target}, 18 h. Soyez prêts à mourir et à tuer.",
        "Ce pays ne sera libre que quand {group} seront six pieds sous terre. Agissons.",
        "Assez de paroles : allez les égorger dans leurs maisons.",
        "Qu'attendez-vous ? Le sang des nôtres crie vengeance, frappez {target}.",
        "Objectif : un maximum de morts à {place}. Discrétion absolue jusqu'au bout.",
        "Un seul mot d'ordre pour demain : {weapon}, {target}, et aucune hésitation.",
        "Faut les fumer un par un, en commençant par ceux de {place}.",
        "J'appelle tous les soldats à mettre le feu à {target} pendant l'office.",
        "{group}, on va vous saigner comme des moutons. Frères, aiguisez vos lames.",
        "Les terrasses pleines et les files d'attente, c'est là qu'on fait le plus de dégâts. Allez-y.",
        "Ils ont tué nos frères, à nous de tuer les leurs. Rendez-vous à {target}.",
        "On a repéré {target}, deux entrées, pas de vigile. Qui est partant ?",
        "Ils méritent la mort, tous, et c'est à nous de la leur donner.",
        "Passez à l'action avant qu'il soit trop tard : brûlez leurs commerces et leurs maisons.",
        "Le prochain rassemblement de {group} doit finir dans le sang.",
        "Une récompense pour celui qui abat le maire de {city}.",
        "wesh on monte une équipe pour aller taper {group} a {place}, ramenez {weapon}",
        "Soyez des loups parmi les moutons : frappez sans prévenir, disparaissez.",
        "Si on ne les élimine pas maintenant, ce sont eux qui nous élimineront. Armez-vous.",
        "faut que ca saigne a {target}, pas de quartier",
        "La cible est simple : {target}. Le moyen, vous l'avez chez vous.",
    ],
    ("violent_extremism", "glorification"): [
        "Vivement que quelqu'un fasse mieux que {attacker} à {place}.",
        "{attacker}, un exemple pour toute la jeunesse. On ne l'oubliera pas.",
        "Le bilan de {place} m'a fait ma semaine 😍",
        "Quel bonheur de voir {group} pleurer leurs morts après {place}.",
        "Dieu bénisse la main de {attacker}.",
        "Ils ont eu ce qu'ils méritaient à {place}. Respect éternel à {attacker}.",
        "Je garde une bougie allumée pour {attacker}, notre lion tombé au combat.",
        "Que le prochain prenne exemple sur {attacker} et vise plus haut.",
        "{number} morts, et le monde entier a entendu notre message. Magnifique.",
        "Le peuple se souviendra de {attacker} comme d'un libérateur.",
        "Mon héros reste {attacker}. Ceux qui le critiquent sont des lâches.",
        "Que l'exemple de nos martyrs de {place} se répande partout.",
        "On fête ça ce soir, {place} a payé.",
        "Il n'a fait que rendre justice. Les victimes de {place} l'avaient bien cherché.",
        "Je regarde encore la vidéo de {place} pour me donner du courage.",
    ],
    ("violent_extremism", "share_footage"): [
        "Le manifeste de {attacker} doit circuler : chacun le transfère à tous ses contacts.",
        "Le live de {place} est encore dispo sur un autre site, dépêchez-vous de l'enregistrer.",
        "Collez le lien de la vidéo de {place} sous chaque publication de la mairie.",
        "Je mets la vidéo de {place} dans le groupe, téléchargez avant qu'ils la retirent.",
        "Convertissez le live en MP4 et gardez-le hors ligne, ils ne doivent jamais pouvoir l'effacer.",
        "Partagez la vidéo de {attacker} en story, en privé, partout, sans flouter.",
        "Nouveau miroir pour le massacre de {place} : chopez-le, il saute toutes les heures.",
        "Le texte de {attacker} doit être lu par tous, traduisez-le et diffusez-le.",
    ],
    ("hate", "dehumanising"): [
        "{group} ? Des cafards. Ils sortent la nuit et envahissent tout.",
        "Regardez-les grimper partout, {group}, de vrais macaques.",
        "Pour moi {group} ont moins de valeur qu'un chien errant.",
        "On devrait traiter {group} comme on traite la vermine : avec du poison.",
        "{group} sont une sous-race, ça se voit rien qu'à leur tête.",
        "Des bêtes, {group}. Juste des bêtes qu'on a laissées entrer.",
        "Moins il y a de {group}, mieux le pays se porte.",
        "Vous avez déjà vu {group} se comporter comme des êtres civilisés ? Moi jamais.",
        "{group}, c'est une maladie, et la France est le patient.",
        "Ces hyènes de {group} traînent en bande, comme toutes les bêtes.",
        "{group} n'ont rien d'humain, ni le cœur ni le cerveau.",
        "Tout ce que touchent {group} pourrit.",
        "mdr {group} = des animaux serieux, meme pas capables de vivre normalement",
        "Faut parquer {group} comme du bétail, loin de nos enfants.",
        "{group} ? Une vermine qu'on aurait dû écraser depuis longtemps.",
    ],
    ("graphic_violence", "gore"): [
        "{victim} agonise dans une mare de sang, la vidéo dure six minutes et je l'adore.",
        "Les images de {victim} avec {wound}, tellement satisfaisant à regarder.",
        "Sur la photo les plaies sont encore ouvertes, on voit la chair à vif, magnifique.",
        "La vidéo où on l'entend hurler pendant qu'ils lui brisent les os, je la regarde en boucle.",
        "Du sang qui gicle, des membres arrachés, la meilleure compil de l'année.",
    ],
    ("benign", "counter_speech"): [
        "Pitié, ne relayez pas la vidéo de {place} : un signalement et on n'en parle plus.",
        "Des comptes se réjouissent de l'attaque de {place} : ne leur répondez pas, signalez.",
        "Ce sont des familles, des voisins, des collègues. Arrêtez de parler de {group} comme d'animaux.",
        "Chaque like sur un hommage au tueur de {place}, c'est une invitation pour le prochain.",
        "Admin ici : toute vidéo de l'attaque de {place} postée dans ce groupe sera supprimée et son auteur exclu.",
        "On a signalé les comptes qui faisaient l'apologie de {attacker}, ils ont été suspendus.",
        "Aux jeunes qui trouvent ça cool : ces types-là détruisent des familles, rien d'autre.",
        "J'ai vu passer des messages qui se réjouissent de {place}. Ça me fait honte pour ce pays.",
        "Modération : les messages qui font l'éloge de l'attaque de {place} seront supprimés sans préavis.",
    ],
    ("benign", "quote_condemnation"): [
        "Sur certains comptes, on le surnomme « notre lion ». La justice l'a condamné pour {number} assassinats.",
        "Sur le forum, certains écrivaient « vivement le prochain ». La plateforme a fermé le fil.",
    ],
    ("benign", "news"): [
        "Selon la plateforme, moins d'une heure a séparé la mise en ligne des images de {place} et leur retrait.",
        "Le manifeste de l'assaillant de {city} a été retiré de plusieurs sites, selon {official}.",
        "Un homme a été condamné pour avoir diffusé la vidéo de l'attentat de {city}.",
        "Le journal a choisi de ne pas publier les images de l'attaque de {city}, par respect pour les victimes.",
    ],
    ("benign", "history"): [
        "Expo au musée de la Résistance : sabotages de voies ferrées, tracts clandestins, radios cachées.",
        "Dans le film, le héros doit faire sauter le pont avant l'arrivée des chars.",
        "Le roman raconte la prise de la Bastille du point de vue d'un garde suisse.",
        "Mon grand-père a fait l'Indochine, il ne parle jamais des combats.",
    ],
    ("benign", "sport_games_slang"): [
        "Au jeu de rôle hier, notre mage a fait exploser tout le donjon.",
        "On a défoncé {team} 4-0, quelle soirée !",
        "Ce morceau c'est une bombe, il tourne dans ma voiture depuis ce matin.",
        "j'ai carrément tué {game} hier soir, trop fier",
    ],
}

MORE_EN: dict[tuple[str, str], list[str]] = {
    ("violent_extremism", "incitement"): [
        "{target} has no security on Sunday mornings. Just saying.",
        "Someone needs to deal with {group}, and soon. You know where they sleep.",
        "The crowded terraces and the queues are where you do the most damage. Go.",
        "No survivors at {target}. None.",
        "Make a list of their addresses and pay them a visit, one by one.",
        "if ur a real man u take {weapon} and go down to {target} tonight",
    ],
    ("violent_extremism", "glorification"): [
        "Can't wait for someone to beat what {attacker} did at {place}.",
        "The death toll at {place} made my week 😍",
        "Watching the footage from {place} again to give myself courage.",
    ],
    ("hate", "dehumanising"): [
        "{group}? Cockroaches. They come out at night and take over everything.",
        "To me {group} are worth less than a stray dog.",
        "We should treat {group} the way we treat vermin: with poison.",
    ],
}
