// Writes "publicized" copies of .NET assemblies: every type and every non-virtual member made public.
// Usage: MlNetPublicizer <output directory> <assembly>... [--search <directory>]...
// The copies are reference assemblies for the compiler only; at run time the real assemblies load and the
// consuming assembly's IgnoresAccessChecksToAttribute lets the runtime accept the access.
using Mono.Cecil;

var outputDirectory = (string?)null;
var inputs = new List<string>();
var searchDirectories = new List<string>();
for (var i = 0; i < args.Length; i++)
{
    if (args[i] == "--search" && i + 1 < args.Length)
    {
        searchDirectories.Add(args[++i]);
    }
    else if (outputDirectory is null)
    {
        outputDirectory = args[i];
    }
    else
    {
        inputs.Add(args[i]);
    }
}

if (outputDirectory is null || inputs.Count == 0)
{
    Console.Error.WriteLine("usage: MlNetPublicizer <output directory> <assembly>... [--search <directory>]...");
    return 2;
}

Directory.CreateDirectory(outputDirectory);
using var resolver = new DefaultAssemblyResolver();
foreach (var directory in searchDirectories.Concat(inputs.Select(Path.GetDirectoryName)).Distinct())
{
    if (!string.IsNullOrEmpty(directory))
    {
        resolver.AddSearchDirectory(directory);
    }
}

foreach (var input in inputs)
{
    var output = Path.Combine(outputDirectory, Path.GetFileName(input));
    var temporary = output + ".tmp";
    using (var assembly = AssemblyDefinition.ReadAssembly(input, new ReaderParameters { AssemblyResolver = resolver }))
    {
        var count = 0;
        foreach (var module in assembly.Modules)
        {
            foreach (var type in module.GetTypes())
            {
                count += Publicizer.Publicize(type);
            }
        }

        // The strong-name signature cannot stay valid after editing; the compiler does not check it, and the
        // copy is never loaded at run time.
        assembly.Write(temporary);
        Console.WriteLine($"MlNetPublicizer: {Path.GetFileName(input)}: {count} types and members made public -> {output}");
    }

    File.Move(temporary, output, overwrite: true);
}

return 0;

/// <summary>Visibility rewriting rules.</summary>
internal static class Publicizer
{
    /// <summary>Makes the type and its members public; returns how many were changed.</summary>
    public static int Publicize(TypeDefinition type)
    {
        var changed = 0;
        if (IsCompilerGenerated(type.Name))
        {
            return 0;
        }

        if (type.IsNested && !type.IsNestedPublic)
        {
            type.IsNestedPublic = true;
            changed++;
        }
        else if (!type.IsNested && !type.IsPublic)
        {
            type.IsPublic = true;
            changed++;
        }

        var memberNames = new HashSet<string>(type.Properties.Select(p => p.Name).Concat(type.Events.Select(e => e.Name)));
        foreach (var method in type.Methods)
        {
            // Virtual members keep their accessibility so overrides in other assemblies stay legal; explicit
            // interface implementations (dotted names) and compiler-generated members stay hidden.
            if (method.IsPublic || method.IsVirtual || IsCompilerGenerated(method.Name) || method.Name.Contains('.', StringComparison.Ordinal) && !method.IsConstructor)
            {
                continue;
            }

            method.IsPublic = true;
            changed++;
        }

        foreach (var field in type.Fields)
        {
            // A field named like a property or event (an event's backing field) would make the name ambiguous.
            if (field.IsPublic || IsCompilerGenerated(field.Name) || memberNames.Contains(field.Name))
            {
                continue;
            }

            field.IsPublic = true;
            changed++;
        }

        return changed;
    }

    private static bool IsCompilerGenerated(string name) => name.Contains('<', StringComparison.Ordinal);
}
